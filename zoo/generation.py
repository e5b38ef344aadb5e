"""zoo's own decoder, the default (``native``) rollout engine: every zoo model, CPU and GPU.

The engine is request-level (:mod:`zoo.engine_core`: submit, abort, step, with continuous batching);
``NativeEngine.generate(prompts, n, params)`` is the batch API over it, ``n`` completions of every prompt:

- every completion is a request; identical prompts are prefilled once;
- decoding samples with temperature, top-k and top-p (temperature 0 is greedy); every row (one completion of
  one prompt) draws from its own random stream, a hash of its seed and the step (:func:`row_uniforms`), so its
  tokens never depend on which other rows share the batch or when they finish; the rows' seeds follow from
  ``params.seed`` and the row's place (prompt, sample), so a seeded call is reproducible;
- a row finishes on a stop token (kept in the output), a stop string (checked on the decoded tail) or
  ``max_new_tokens``; a finished row leaves the batch at once, so no decode step is spent on it;
- a prompt is complete once ``group_complete_at`` of its ``n`` completions (default all) have finished; its
  other rows are aborted then. With ``finished_groups_quota`` it stops as soon as that many prompts are
  complete and returns the others as unfinished (what tail batching needs): the first ``quota`` to complete,
  each with its first ``group_complete_at`` finished completions, in prompt and sample order.

Per-token log-probs are ``log softmax(logits / temperature)`` of the sampled token (of the raw logits when
greedy), before top-k / top-p truncation: the same quantity a trainer computes from its own forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Sample:
    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop token or string) or "length"


@dataclass
class GenerationResult:
    samples: list[Sample]  # grouped by prompt, in prompt order, n per finished prompt
    unfinished_prompts: list[int] = field(default_factory=list)  # left out by an early stop
    decode_steps: int = 0
    generated_tokens: int = 0


# SplitMix64 (Steele, Lea and Flood 2014) on int64 tensors: multiplications wrap modulo 2**64 as the hash wants.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def row_seeds(seed: int | None, rows: int, device=None) -> torch.Tensor:
    """The seeds (rows,) of rows 0 .. rows - 1 of a call seeded with ``seed`` (None: a fresh draw from torch's
    global random state)."""
    if seed is None:
        seed = int(torch.randint(0, 1 << 62, (1,)))
    index = torch.arange(rows, dtype=torch.long, device=device)
    return splitmix64(splitmix64(torch.full_like(index, seed)) + index * _GOLDEN)


def _int64(value: int) -> int:
    """``value`` modulo 2**64, as a signed 64-bit integer."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


def row_uniforms(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Uniform draws in [0, 1) (rows,) of each row's stream at ``step`` (one for all rows, or one per row): 24
    bits of a hash of (seed, step)."""
    offset = _int64((step + 1) * _GOLDEN) if isinstance(step, int) else (step + 1) * _GOLDEN
    return _shift_right(splitmix64(seeds + offset), 40).float() * 2.0**-24


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (n,) and their log-probs (n,) from last-position logits (n, V), drawn with ``uniforms`` (n,)
    in [0, 1) (:func:`row_uniforms`; None: from torch's global random state)."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    scaled = logits / params.temperature if params.temperature != 1 else logits
    logprobs = torch.log_softmax(scaled, -1)
    if not params.top_k and params.top_p >= 1.0:
        return _inverse_cdf(logprobs.exp(), logprobs, uniforms)
    if params.top_k:
        kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scaled, descending=True, dim=-1)
        probs = torch.softmax(ordered, -1)
        outside = probs.cumsum(-1) - probs > params.top_p  # keep the smallest prefix whose mass reaches top_p
        scaled = scaled.scatter(1, order, ordered.masked_fill(outside, float("-inf")))
    return _inverse_cdf(torch.softmax(scaled, -1), logprobs, uniforms)


def _inverse_cdf(
    probs: torch.Tensor, logprobs: torch.Tensor, uniforms: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling, one uniform draw per row (torch.multinomial draws one per vocabulary entry)."""
    cdf = probs.cumsum(-1)
    if uniforms is None:
        uniforms = torch.rand(cdf.shape[0], device=cdf.device)
    uniform = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, uniform).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)


class NativeEngine:
    """Generates with a zoo model in this process. ``load_weights`` copies new weights into it.

    ``generate`` is the batch API over the request-level :class:`zoo.engine_core.EngineCore`; :meth:`core` hands
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
        from zoo.engine_core import EngineCore, RowPool

        positions = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if positions is not None and max_length - 1 > positions:
            raise ConfigError(
                f"a prompt plus max_new_tokens={max_new_tokens} takes {max_length - 1} positions, more than the "
                f"model's max_position_embeddings={positions}"
            )
        mode = self.decode if self.decode != "auto" else ("graphs" if self.device.type == "cuda" else "eager")
        pool = self.pool
        if pool is None or pool.decode != mode or not pool.fits(max_running, max_length, self.dtype, max_new_tokens):
            self.pool = pool = None  # free the old buffers first
            self.pool = RowPool(self.model, max_running, max_length, self.dtype, mode, max_new_tokens)
        return EngineCore(self.pool, self.tokenizer)

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
        from zoo.engine_core import Finished, Request

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


def hits_stop_string(tokenizer, tokens: list[int], stop_strings: tuple[str, ...]) -> bool:
    """Whether the decoded tail of ``tokens`` contains one of ``stop_strings``."""
    if not stop_strings:
        return False
    if tokenizer is None:
        raise ValueError("stop strings need the engine's tokenizer")
    tail = tokenizer.decode(tokens[-max(len(s) for s in stop_strings) - 2 :])
    return any(s in tail for s in stop_strings)


def finish(tokenizer, tokens: Sequence[int], params: SamplingParams) -> tuple[int, str]:
    """Where a completion ends under ``params``' stop rules, and why: (number of tokens kept, finish reason).
    For engines that generate past a row's end (padding it), to cut their output the native engine's way."""
    stop_tokens = set(params.stop_token_ids)
    for i, token in enumerate(tokens):
        if token in stop_tokens or hits_stop_string(tokenizer, list(tokens[: i + 1]), params.stop_strings):
            return i + 1, "stop"
    return min(len(tokens), params.max_new_tokens), "length"
