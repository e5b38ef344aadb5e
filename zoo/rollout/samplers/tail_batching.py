"""Tail batching (RollPacker, Gao et al. 2025, arXiv:2509.21009 §4): a sampler callback that decides which
prompts each RL step trains, so that most rollout rounds are short and the long-tail prompts wait for a few
long rounds of their own. Any RL module uses it unchanged (``sampler=tail_batching``).

Each step is one round with P0 prompts × R0 responses trained (P0 = ``data.batch_size``, R0 =
``module.rollout.n``):

- **short round** (when the long-prompt queue holds fewer than P0 prompts): launch ⌈η_P·P0⌉ fresh prompts
  with ⌈η_R·R0⌉ responses each; a prompt is complete when R0 of its responses have finished (the engine
  aborts its others then); the engine stops when P0 prompts are complete. Those P0 prompts, each with its
  first R0 finished responses, are trained; every other launched prompt joins the queue;
- **long round** (when the queue holds at least P0 prompts): the first P0 queued prompts, exactly R0
  responses each, run to the end: no over-provisioning.

No prompt is dropped or trained twice; only the order changes, and training stays on-policy. With η_P = η_R = 1
it is plain synchronous batching, step for step.

Choices where the paper is silent: fresh prompts follow the same seeded per-epoch order the training loader
would give (so η = 1 reproduces a run without the sampler); an epoch's last prompts are skipped when fewer
than P0 (the loader's ``drop_last``) and otherwise topped up from the next epoch's order. The queue is FIFO. With a
sampler, the training loader only paces Lightning's steps; its batches are not used. The queue, the position
in the prompt order and the round counters are saved in checkpoints, so a resumed run continues exactly.

Logged per step: ``sampler/round`` (0 short, 1 long), ``sampler/short_rounds``, ``sampler/long_rounds``,
``sampler/queue_size``, ``sampler/launched_prompts`` and ``sampler/longest_response`` (tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L

from zoo.errors import ConfigError
from zoo.rollout.samplers.base import Sampler
from zoo.rollout.samplers.queue import queue_round
from zoo.text.loader import PromptStream


@dataclass
class Launch:
    """What one round asks of the rollout engine."""

    prompts: list[int]  # indices into the training prompts
    n: int  # responses per prompt
    quota: int | None  # stop once this many prompts are complete (None: run every prompt to its end)
    complete_at: int  # finished responses that complete a prompt
    long: bool


@dataclass
class TailBatcher:
    """The round scheduler on its own (no Lightning, no tensors): what to launch, and what to do with what
    came back. ``fresh`` yields prompt indices in training order."""

    prompts_per_step: int  # P0
    responses_per_prompt: int  # R0
    prompt_ratio: float = 1.25  # η_P
    response_ratio: float = 1.25  # η_R
    queue: list[int] = field(default_factory=list)
    short_rounds: int = 0
    long_rounds: int = 0

    def __post_init__(self) -> None:
        if self.prompt_ratio < 1 or self.response_ratio < 1:
            raise ConfigError(f"tail batching ratios must be >= 1, got {self.prompt_ratio}, {self.response_ratio}")

    def plan(self, fresh: Callable[[int, int], list[int]]) -> Launch:
        """The next round. ``fresh(count, at_least)`` returns ``count`` new prompts, or as many as the current
        epoch still has when that is at least ``at_least``."""
        p0, r0 = self.prompts_per_step, self.responses_per_prompt
        if len(self.queue) >= p0:
            prompts, self.queue = self.queue[:p0], self.queue[p0:]
            return Launch(prompts, r0, None, r0, long=True)
        prompts = fresh(math.ceil(self.prompt_ratio * p0 - 1e-9), p0)
        return Launch(prompts, math.ceil(self.response_ratio * r0 - 1e-9), p0, r0, long=False)

    def finish(self, launch: Launch, completed: Sequence[int]) -> None:
        """Record a round's outcome: ``completed`` are the positions in ``launch.prompts`` of the prompts that
        were trained. Positions, because a launch may hold one prompt twice (an epoch's tail topped up from the
        next epoch): each occurrence is trained or queued on its own."""
        if launch.long:
            self.long_rounds += 1
            return
        self.short_rounds += 1
        done = set(completed)
        self.queue.extend(p for i, p in enumerate(launch.prompts) if i not in done)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": list(self.queue), "short_rounds": self.short_rounds, "long_rounds": self.long_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = list(state["queue"])
        self.short_rounds, self.long_rounds = state["short_rounds"], state["long_rounds"]


class TailBatching(L.Callback, Sampler):
    def __init__(self, prompt_ratio: float = 1.25, response_ratio: float = 1.25) -> None:
        self.prompt_ratio, self.response_ratio = prompt_ratio, response_ratio
        self.batcher: TailBatcher | None = None
        self.stream: PromptStream | None = None
        self._restored: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if pl_module.rollout_callback.queue_options.filter_groups:
            raise ConfigError("rollout.filter_groups does not combine with sampler=tail_batching yet")
        data = trainer.datamodule
        self.problems = data.train_set
        self.batcher = TailBatcher(
            data.hparams.batch_size, pl_module.rollout_config.n, self.prompt_ratio, self.response_ratio
        )
        self.stream = PromptStream(len(self.problems), data.hparams.seed, trainer.global_rank, trainer.world_size)
        if self._restored is not None:
            self.load_state_dict(self._restored)

    def next_round(self, module: L.LightningModule):
        """Plan a round, run it through the module's rollout stage, and return the :class:`Round` it trains."""
        launch = self.batcher.plan(self.stream.take)
        callback = module.rollout_callback
        if callback.schedule == "queue":  # the round's quota and protection become queue rules
            needed = launch.quota or len(launch.prompts)
            protected = [launch.long] * len(launch.prompts)
            step, _ = queue_round(
                callback, module, self.problems, launch.prompts, protected, launch.n, launch.complete_at, needed
            )
        else:
            problems = [self.problems[i] for i in launch.prompts]
            step = module.rollout(problems, launch.n, launch.quota, launch.complete_at)
        self.batcher.finish(launch, step.kept)
        lengths = step.batch.response_mask.sum(1)
        module.log_dict(
            {
                "sampler/round": float(launch.long),
                "sampler/short_rounds": float(self.batcher.short_rounds),
                "sampler/long_rounds": float(self.batcher.long_rounds),
                "sampler/queue_size": float(len(self.batcher.queue)),
                "sampler/launched_prompts": float(len(launch.prompts)),
                "sampler/longest_response": lengths.max().float(),
            }
        )
        return step

    def state_dict(self) -> dict[str, Any]:
        if self.batcher is None:
            return {}
        return {"batcher": self.batcher.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.batcher is None:  # restored before setup: apply it there
            self._restored = state
            return
        self.batcher.load_state_dict(state["batcher"])
        self.stream.load_state_dict(state["stream"])
