"""AsyPPO's critic ensemble in pure tensors (Liu et al. 2025, arXiv:2510.01656; spec: ../shared/papers notes §2):
which critic trains on which sample, the ensemble's value and uncertainty, and the two uncertainty masks.

- :func:`critic_shards`: the critics' data split without overlap. ``responses_within_prompt`` (default): every
  prompt's responses are dealt round-robin among the M critics in row order, so each critic sees every prompt
  and the shards differ in size by at most one response per prompt; ``whole_prompts``: prompts are dealt
  round-robin in order of first appearance, each with all its responses; ``shared`` (an ablation): every critic
  trains on every sample (shard ``EVERY_CRITIC``).
- :func:`ensemble_values`: V̄ = mean (or min) over critics, σ = standard deviation over critics per token. σ is
  the population standard deviation (divisor M), a choice where the paper is silent: one critic, or identical
  critics, give σ = 0.
- :func:`uncertainty_masks`: advantage mask I^A (0 where σ is in the lowest ``low`` fraction: critics agree, no
  policy-gradient term there) and entropy mask I^H (0 where σ is in the highest ``high`` fraction: excluded from
  the entropy bonus). The thresholds are quantiles of σ over the valid tokens only (:func:`linear_quantile`:
  ``torch.quantile``'s linear interpolation, found by selection, so neither its 2^24-element limit nor a float32
  copy applies), computed and compared in σ's own dtype: lowest means σ < quantile(σ, low), highest
  σ > quantile(σ, 1 − high). With distinct σ and ``low · n`` an integer (n valid tokens) exactly ``low · n``
  tokens are masked; tokens tied at a threshold keep their terms, so critics that do not disagree anywhere (σ all
  equal, as at the start when their heads are zero) mask nothing.
"""

from __future__ import annotations

import math

import torch

SHARD_MODES = ("responses_within_prompt", "whole_prompts", "shared")
EVERY_CRITIC = -1  # the shard of a sample every critic trains on (``shared``)
AGGREGATES = ("mean", "min")


def critic_shards(prompt_index: torch.Tensor, critics: int, mode: str = "responses_within_prompt") -> torch.Tensor:
    """The critic (N,) that trains on each of N samples, given each sample's prompt (N,)."""
    if mode not in SHARD_MODES:
        raise ValueError(f"shard mode must be one of {', '.join(SHARD_MODES)}, got {mode!r}")
    if critics < 1:
        raise ValueError(f"need at least one critic, got {critics}")
    if mode == "shared":
        return torch.full_like(prompt_index, EVERY_CRITIC)
    owners = prompt_index.tolist()
    order = {p: i for i, p in enumerate(dict.fromkeys(owners))}  # prompts in order of first appearance
    if mode == "whole_prompts":
        return torch.tensor([order[p] % critics for p in owners], device=prompt_index.device)
    seen: dict[int, int] = {}
    shards = []
    for p in owners:
        shards.append(seen.get(p, 0) % critics)
        seen[p] = seen.get(p, 0) + 1
    return torch.tensor(shards, device=prompt_index.device)


def ensemble_values(values: torch.Tensor, aggregate: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble's value and uncertainty (each shaped like one critic's values) from ``values`` (M, ...)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    value = values.mean(0) if aggregate == "mean" else values.min(0).values
    return value, values.std(0, correction=0)


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of a 1-D tensor with ``torch.quantile``'s default (linear) interpolation, in the tensor's
    own dtype: the two order statistics around position ``q · (n − 1)`` (``kthvalue``, any size) and their lerp. A
    quantile that falls between tied values is that value exactly."""
    position = q * (len(values) - 1)
    below = math.floor(position)
    value = values.kthvalue(below + 1).values
    if position == below:
        return value
    return torch.lerp(value, values.kthvalue(below + 2).values, position - below)


def uncertainty_masks(
    sigma: torch.Tensor, valid: torch.Tensor, low: float = 0.2, high: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage mask and entropy mask (float, like ``valid``), 1 where a token keeps its term; 0 on padding."""
    if not (0 <= low < 1 and 0 <= high < 1):
        raise ValueError(f"mask fractions must lie in [0, 1), got low={low}, high={high}")
    valid = valid.bool()
    keep_advantage, keep_entropy = valid.clone(), valid.clone()
    population = sigma[valid]
    if len(population):
        if low > 0:
            keep_advantage &= sigma >= linear_quantile(population, low)
        if high > 0:
            keep_entropy &= sigma <= linear_quantile(population, 1 - high)
    return keep_advantage.to(sigma.dtype), keep_entropy.to(sigma.dtype)
