"""The batch hierarchy of an RL step, checked before the first rollout and printed as one table.

A step samples ``prompts`` (``data.batch_size``) x ``n`` (``module.rollout.n``) completions (a method may lay out
more rows per sample: RAVR three); ``ppo_epochs`` passes over them in minibatches of ``minibatch_size`` rows, one
optimizer step each; each minibatch's forwards are micro-batches of at most ``micro_batch_size`` rows and
``micro_batch_tokens`` tokens (rows x the longest row among them; with ``padding_free`` packed rows, several short
rows to one, :mod:`zoo.rl.packing`), their gradients accumulated. The longest row the
plan can know at the start is the longest prompt plus ``max_new_tokens``; multi-turn rows with environment
observations can be longer, and a micro-batch then says so in one line when it meets one.

Refused at once, each in one line naming the settings: a minibatch larger than the step's rows or not dividing
them, a micro-batch of more rows than its minibatch, a token budget below the longest row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zoo.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    prompts: int
    n: int
    rows_per_sample: int
    ppo_epochs: int
    minibatch_size: int | None
    micro_batch_size: int | None
    micro_batch_tokens: int | None
    longest_row: int  # the longest prompt + max_new_tokens
    padding_free: bool = False  # forwards on packed rows: several short rows to one

    @property
    def rows(self) -> int:
        return self.prompts * self.n * self.rows_per_sample

    @property
    def minibatch_rows(self) -> int:
        return self.minibatch_size or self.rows

    @property
    def micro_batch_rows(self) -> int:
        """Rows per micro-batch at most (rows of the longest length under the token budget; packed, short rows
        share a row, so a micro-batch holds more of them)."""
        rows = self.micro_batch_size or self.minibatch_rows
        if self.micro_batch_tokens is not None:
            rows = min(rows, self.micro_batch_tokens // self.longest_row)
        return min(rows, self.minibatch_rows)

    def check(self) -> BatchPlan:
        samples = f"data.batch_size={self.prompts} prompts x module.rollout.n={self.n}"
        if self.rows_per_sample > 1:
            samples += f" x {self.rows_per_sample} rows per sample"
        if self.minibatch_size is not None and (self.minibatch_size > self.rows or self.rows % self.minibatch_size):
            raise ConfigError(
                f"module.algorithm.minibatch_size={self.minibatch_size} does not divide the {self.rows} rows of a step "
                f"({samples}): choose a divisor of {self.rows}"
            )
        if self.micro_batch_size is not None and self.micro_batch_size > self.minibatch_rows:
            raise ConfigError(
                f"module.algorithm.micro_batch_size={self.micro_batch_size} is larger than its minibatch "
                f"({self.minibatch_rows} rows: module.algorithm.minibatch_size or the whole step)"
            )
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < self.longest_row:
            raise ConfigError(
                f"module.algorithm.micro_batch_tokens={self.micro_batch_tokens} is below the longest row "
                f"({self.longest_row} tokens: the longest prompt + module.rollout.max_new_tokens)"
            )
        return self

    def table(self) -> str:
        minibatches = self.rows // self.minibatch_rows
        lines = [
            ("prompts per step (data.batch_size)", self.prompts),
            ("samples per prompt (module.rollout.n)", self.n),
            ("rows per step", self.rows),
            ("epochs over the step (module.algorithm.ppo_epochs)", self.ppo_epochs),
            ("rows per minibatch (module.algorithm.minibatch_size)", self.minibatch_rows),
            ("optimizer steps per step", self.ppo_epochs * minibatches),
            ("rows per micro-batch, at most", self.micro_batch_rows),
            ("micro-batches per minibatch, at least", math.ceil(self.minibatch_rows / max(self.micro_batch_rows, 1))),
            ("tokens per micro-batch, at most (module.algorithm.micro_batch_tokens)", self.micro_tokens),
            ("forward rows (module.algorithm.padding_free)", "packed" if self.padding_free else "padded"),
            ("longest row (prompt + max_new_tokens)", self.longest_row),
        ]
        width = max(len(name) for name, _ in lines)
        return "\n".join(["RL batch plan:"] + [f"  {name:<{width}}  {value}" for name, value in lines])

    @property
    def micro_tokens(self) -> int:
        return self.micro_batch_tokens or self.micro_batch_rows * self.longest_row

    def metrics(self) -> dict[str, float]:
        return {
            "batch/rows_per_step": float(self.rows),
            "batch/minibatch_rows": float(self.minibatch_rows),
            "batch/micro_batch_rows": float(self.micro_batch_rows),
            "batch/micro_batch_tokens": float(self.micro_tokens),
        }
