"""Sampling, shared by every rollout engine: the parameters, each sample's own random stream, one token's draw,
and the stop rules.

- Every sample (one completion of one prompt) draws from its own random stream, a hash of its seed and the step
  (:func:`row_uniforms`, SplitMix64), so its tokens never depend on which other samples share a batch or when
  they finish; :func:`row_seeds` derives the seeds of a call's rows from the call's seed.
- :func:`sample_tokens` samples with temperature, top-k and top-p (temperature 0 is greedy) by inverse-CDF
  sampling, one uniform draw per row. Per-token log-probs are ``log softmax(logits / temperature)`` of the
  sampled token (of the raw logits when greedy), before top-k / top-p truncation: the same quantity a trainer
  computes from its own forward pass.
- A completion ends on a stop token (kept in the output), a stop string (checked on the decoded tail) or
  ``max_new_tokens`` (:func:`finish` cuts the output of engines that generate past a row's end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


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
