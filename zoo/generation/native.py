"""zoo's own decoder, the default (``native``) rollout engine: every zoo model, CPU and GPU.

The engine is request-level (:mod:`zoo.generation.core`: submit, abort, step, with continuous batching);
``NativeEngine.generate(prompts, n, params)`` is the batch API over it, ``n`` completions of every prompt:

- every completion is a request (sample j of prompt p is seeded as row p·n + j of
  :func:`zoo.generation.sampling.row_seeds`, so a seeded call is reproducible and a row's tokens do not depend on
  the others); identical prompts are prefilled once; sampling and stop rules are :mod:`zoo.generation.sampling`'s;
  a finished row leaves the batch at once;
- a prompt is complete once ``group_complete_at`` of its ``n`` completions (default all) have finished; its
  other rows are aborted then. With ``finished_groups_quota`` it stops as soon as that many prompts are
  complete and returns the others as unfinished (what tail batching needs): the first ``quota`` to complete,
  each with its first ``group_complete_at`` finished completions, in prompt and sample order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.generation.core import EngineCore, RowPool
from zoo.generation.engine import Finished, GenerationResult, Request, RequestLevelEngine, Sample
from zoo.generation.sampling import SamplingParams, row_seeds


class NativeEngine(RequestLevelEngine):
    """Generates with a zoo model in this process. ``load_weights`` copies new weights into it.

    ``generate`` is the batch API over the request-level :class:`zoo.generation.core.EngineCore`; :meth:`core` hands
    out the core itself (what queue scheduling drives). ``decode``: ``auto`` (CUDA graphs on a GPU, the exact
    eager loop elsewhere), ``eager``, ``graphs``, or ``static`` (the graphs' static-buffer steps run uncaptured:
    the graph path's logic on any device).
    """

    DECODE_MODES = ("auto", "eager", "graphs", "static")

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        dtype: torch.dtype | None = None,
        decode: str = "auto",
    ) -> None:
        if decode not in self.DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(self.DECODE_MODES)}, got {decode!r}")
        self.model, self.tokenizer, self.dtype, self.decode = model, tokenizer, dtype, decode
        self.pool = None  # the last core's RowPool, reused (with its CUDA graphs) while it fits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)  # in place: captured decode graphs keep reading the same memory

    @contextmanager
    def serving(self):
        """The model in eval mode while the engine decodes (its mode is restored after)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield self
        finally:
            self.model.train(was_training)

    def core(self, max_running: int, max_length: int, max_new_tokens: int):
        """A request-level core with ``max_running`` rows of ``max_length`` columns (prompt + completion)."""
        positions = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if positions is not None and max_length - 1 > positions:
            raise ConfigError(
                f"a prompt of {max_length - max_new_tokens} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"model's max_position_embeddings={positions}"
            )
        mode = self.decode if self.decode != "auto" else ("graphs" if self.device.type == "cuda" else "eager")
        pool = self.pool
        if pool is None or pool.decode != mode or not pool.fits(max_running, max_length, self.dtype, max_new_tokens):
            self.pool = pool = None  # free the old buffers first
            self.pool = RowPool(self.model, max_running, max_length, self.dtype, mode, max_new_tokens)
        return EngineCore(self.pool, self.tokenizer, rows=max_running)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> GenerationResult:
        """n requests per prompt (request p * n + j is sample j of prompt p, seeded as row p * n + j), each
        group's surplus aborted once ``complete_at`` of them finished, everything aborted once ``quota`` groups
        are complete."""
        quota, complete_at = finished_groups_quota, group_complete_at or n
        if not 1 <= complete_at <= n:
            raise ValueError(f"group_complete_at={group_complete_at} must lie in [1, n={n}]")
        total = len(prompts) * n
        width = max(len(p) for p in prompts)
        with self.serving():
            core = self.core(total, width + params.max_new_tokens, params.max_new_tokens)
            seeds = row_seeds(params.seed, total).tolist()
            for p, prompt in enumerate(prompts):
                for j in range(n):
                    core.submit(Request(p * n + j, list(prompt), params, seeds[p * n + j]))
            done: dict[int, Finished] = {}
            finished_of: list[list[int]] = [[] for _ in prompts]
            complete: list[int] = []
            while core.busy and not (quota is not None and len(complete) >= quota):
                for result in sorted(core.step(), key=lambda f: f.id):
                    done[result.id] = result
                    p = result.id // n
                    if len(finished_of[p]) < complete_at:
                        finished_of[p].append(result.id)
                        if len(finished_of[p]) == complete_at:
                            complete.append(p)
                            for other in range(p * n, p * n + n):
                                if other not in done and (aborted := core.abort(other)) is not None:
                                    done[other] = aborted
            for request in range(total):  # what an early stop left running or queued
                if request not in done and (aborted := core.abort(request)) is not None:
                    done[request] = aborted
        returned = sorted(complete[:quota] if quota is not None else complete)
        samples = [
            Sample(p, done[r].token_ids, done[r].logprobs, done[r].finish_reason)
            for p in returned
            for r in sorted(finished_of[p])
        ]
        unfinished = sorted(set(range(len(prompts))) - set(returned))
        generated = sum(len(f.token_ids) for f in done.values())
        return GenerationResult(samples, unfinished, core.decode_steps, generated)
