"""Attention-based credit assignment (Li et al., "Attention Illuminates LLM Reasoning", arXiv:2510.13554; the
project's notes §1): the quantities read from attention maps, the token selections and the three strategies that
amplify the advantages of the tokens they select. Pure tensor maths; :mod:`zoo.rl.methods.attention_credit` reads the
maps from a policy and runs it inside the RL loop.

Conventions: a map ``A`` (..., N, N) is causal and row-stochastic, ``A[t, s]`` the weight query t puts on key s;
vectors (..., N) run over sequence positions (prompt and response); ``rows`` (..., N, broadcastable against the
maps' leading dimensions) marks the response positions R. A token's metrics come from the attention row whose
query is that token (the paper's indexing).

- head span (Eq. 7): ``d = mean_{t∈R} Σ_s A[t,s]·(t−s)`` (:func:`mean_attention_distance`); heads sorted by
  span split into the local (bottom ``fraction``) and global (top ``fraction``) groups (:func:`split_heads`);
- WAAD (Eq. 9): ``WAAD_t = Σ_s Ā_loc[t,s]·min(t−s, W)`` (:func:`windowed_attention_distance`);
- FAI (Eq. 10): ``FAI_s = mean_{t∈T(s)} Ā_glob[t,s]``, ``T(s) = {t∈R : s+H_lo ≤ t ≤ s+H_hi}``; a token with
  empty T(s) (near the end) has FAI 0 and is never selected (:func:`future_attention_influence`);
- Δ (Eq. 14): ``Δ_t = |WAAD_t − WAAD_{t+1}|`` for t, t+1 ∈ R (:func:`attention_jumps`);
- TopQ: the ``ceil(q·n)`` highest of a sequence's n candidates, ties to the earlier token (:func:`top_fraction`).

All four metrics are linear in the map, so the mean over a head group of per-head metrics equals the metric of
the group's mean map: :mod:`zoo.rl.methods.attention_credit` reduces every map to its per-head vectors as it is
computed.

Strategies (γ_t = 1 + (γ_amp − 1)·1{selected}, Eq. 13–19): ``local`` (TopQ of Δ: preplan tokens), ``global``
(TopQ of FAI: anchors), ``coupled`` (anchors, a fraction α of whose bonus moves to the token that introduced them
when they are locally dominated, Eq. 18–19), ``entropy`` (TopQ of the token entropy: the paper's high-entropy
baseline), and ``random``, the matched control of the strategy ``control_for`` names: that strategy's γ values of
each sequence, moved to a uniformly random order of the sequence's response positions
(:func:`shuffled_within_rows`), so the control amplifies exactly as many tokens with exactly the same total
weight, at positions that carry no attention signal (it costs the attention pass of the strategy it matches).

Choices where the paper is silent (documented as the notes suggest): τ_waad and τ_Δ default to the sequence's
median WAAD and median Δ; ``intro(t) = argmax_{u∈[t−k, t−1]} Δ_u`` (ties to the nearest u);
γ from the coupled rule is the sum of its indicator terms, so an anchor that also introduces a dominated anchor
gets both bonuses; ``add_local`` (default off) also lifts T_loc tokens to γ_amp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("none", "local", "global", "coupled", "random", "entropy")
CONTROLLED = ("local", "global", "coupled", "entropy")  # what the random control can be matched to
# the signals each strategy reads: attention maps, or the token entropies alone (random: its matched strategy's)
NEEDS = {
    "none": set(),
    "entropy": {"entropy"},
    "local": {"maps"},
    "global": {"maps"},
    "coupled": {"maps"},
}


def signals_needed(strategy: str, control_for: str) -> set[str]:
    return NEEDS[control_for if strategy == "random" else strategy]


SIGNS = ("both", "pos", "neg")


def _offsets(n: int, device: torch.device) -> torch.Tensor:
    """(N, N) float: t − s for query t and key s (negative above the diagonal, where causal maps are 0)."""
    positions = torch.arange(n, device=device, dtype=torch.float32)
    return positions[:, None] - positions[None, :]


def mean_attention_distance(maps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Eq. 7: the mean over response rows of each row's expected backward distance; (...,)."""
    per_row = (maps * _offsets(maps.shape[-1], maps.device).clamp_(min=0)).sum(-1)
    weights = rows.to(per_row.dtype)
    return (per_row * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def windowed_attention_distance(maps: torch.Tensor, window: int) -> torch.Tensor:
    """Eq. 9: WAAD of every row, ``Σ_s A[t,s]·min(t−s, W)``; (..., N)."""
    return (maps * _offsets(maps.shape[-1], maps.device).clamp_(min=0, max=window)).sum(-1)


def future_attention_influence(
    maps: torch.Tensor, rows: torch.Tensor, horizon: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: FAI of every key s, the mean attention it receives from the response rows t with
    ``H_lo ≤ t − s ≤ H_hi``; and where that set is non-empty (the tokens FAI is defined for). (..., N) each."""
    low, high = horizon
    n = maps.shape[-1]
    within = torch.ones(n, n, dtype=torch.bool, device=maps.device).tril_(-low).triu_(-high)  # low <= t - s <= high
    band = rows[..., :, None].bool() & within  # (..., t, s)
    count = band.sum(-2)
    return (maps * band).sum(-2) / count.clamp(min=1), count > 0


def attention_jumps(waad: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14: ``Δ_t = |WAAD_t − WAAD_{t+1}|`` where t and t + 1 are response positions (0 elsewhere), and that
    mask. (..., N) each."""
    rows = rows.bool()
    valid = torch.zeros_like(rows)
    valid[..., :-1] = rows[..., :-1] & rows[..., 1:]
    delta = torch.zeros_like(waad)
    delta[..., :-1] = (waad[..., :-1] - waad[..., 1:]).abs()
    return delta * valid, valid


def split_heads(spans: torch.Tensor, fraction: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the local-focused (lowest span) and global-focused (highest span) heads among ``spans`` (K,):
    ``max(1, round(fraction·K))`` each."""
    count = max(1, round(fraction * spans.numel()))
    order = torch.argsort(spans, stable=True)
    return order[:count], order[-count:]


def top_fraction(scores: torch.Tensor, candidates: torch.Tensor, q: float) -> torch.Tensor:
    """TopQ per sequence: the ``ceil(q·n)`` highest ``scores`` among a sequence's n ``candidates`` (ties to the
    earlier position); a boolean mask (..., N) that never leaves the candidates."""
    candidates = candidates.bool()
    take = torch.ceil(q * candidates.sum(-1) - 1e-6).clamp(min=0)
    order = torch.argsort(scores.float().masked_fill(~candidates, float("-inf")), dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < take[..., None]) & candidates


def shuffled_within_rows(
    values: torch.Tensor, rows: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``values`` (..., N) with each sequence's values on its ``rows`` moved to a uniformly random order of those
    positions (the rest stay): per sequence the same multiset, placed at random."""
    rows = rows.bool()
    keys = torch.rand(rows.shape, generator=generator).to(rows.device).masked_fill(~rows, float("inf"))
    destinations = torch.argsort(keys, dim=-1, stable=True)  # the rows in random order, then the rest in order
    sources = torch.argsort((~rows).to(torch.int8), dim=-1, stable=True)  # the rows in order, then the rest
    return values.clone().scatter_(-1, destinations, values.gather(-1, sources))


def masked_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The (lower) median of each sequence's valid values, (..., 1); 0 for a sequence with none."""
    median = torch.nanmedian(values.float().masked_fill(~valid.bool(), float("nan")), dim=-1, keepdim=True).values
    return torch.nan_to_num(median, nan=0.0)


def coupled_gammas(
    waad: torch.Tensor,
    delta: torch.Tensor,
    delta_valid: torch.Tensor,
    anchors: torch.Tensor,
    gamma_amp: float,
    tau_waad: torch.Tensor | float,
    tau_delta: torch.Tensor | float,
    alpha: float,
    neighbourhood: int,
) -> torch.Tensor:
    """Eq. 18–19: anchors (T_glob) that are locally dominated (``WAAD_t ≤ τ_waad`` and a jump ``Δ_u ≥ τ_Δ`` among
    the ``neighbourhood`` tokens before) keep ``1 − α`` of their bonus and give ``α`` of it to ``intro(t)``, the
    position of the largest such jump; other anchors keep all of it. γ (..., N)."""
    n = waad.shape[-1]
    window = torch.full((neighbourhood, *waad.shape), float("-inf"), device=waad.device)
    for j in range(1, min(neighbourhood, n - 1) + 1):  # window[j − 1, ..., t] = Δ_{t−j}
        window[j - 1, ..., j:] = delta[..., :-j].masked_fill(~delta_valid[..., :-j].bool(), float("-inf"))
    largest, nearest = window.max(0)  # ties: the smallest j, the nearest token
    dominated = anchors.bool() & (waad <= tau_waad) & (largest >= tau_delta)
    positions = torch.arange(n, device=waad.device).expand_as(nearest)
    intro = _mark(n, positions - nearest - 1, dominated)
    bonus = gamma_amp - 1
    return 1 + bonus * (anchors.bool() & ~dominated) + (1 - alpha) * bonus * dominated + alpha * bonus * intro


def _mark(n: int, targets: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Boolean (..., N): True at ``targets[i]`` for every i with ``where[i]``."""
    marks = torch.zeros(where.shape, dtype=torch.int64, device=where.device)
    marks.scatter_add_(-1, targets.clamp(min=0, max=n - 1), where.to(torch.int64))
    return marks > 0


def shape_advantages(advantages: torch.Tensor, gammas: torch.Tensor, sign: str = "both") -> torch.Tensor:
    """Ã = γ·A on the advantages of the chosen sign (``both``: the paper's v2; ``pos``: v1's non-negative ones
    only; ``neg``); γ carries no gradient."""
    gammas = gammas.detach()
    if sign == "pos":
        gammas = torch.where(advantages > 0, gammas, torch.ones_like(gammas))
    elif sign == "neg":
        gammas = torch.where(advantages < 0, gammas, torch.ones_like(gammas))
    elif sign != "both":
        raise ValueError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}")
    return advantages * gammas


@dataclass
class CreditSignals:
    """What the strategies read, over sequence positions (B, N)."""

    rows: torch.Tensor  # the response positions
    waad: torch.Tensor | None = None  # of the local-focused heads' mean map
    fai: torch.Tensor | None = None  # of the global-focused heads' mean map
    fai_defined: torch.Tensor | None = None  # where T(s) is non-empty
    entropy: torch.Tensor | None = None  # of the distribution each response token was drawn from


def credit_gammas(
    strategy: str,
    signals: CreditSignals,
    q: float = 0.4,
    gamma_amp: float = 1.5,
    tau_waad: float | str = "median",
    tau_delta: float | str = "median",
    alpha: float = 0.5,
    neighbourhood: int = 3,
    add_local: bool = False,
    generator: torch.Generator | None = None,
    control_for: str = "coupled",
) -> torch.Tensor:
    """γ (B, N) of ``strategy`` (see the module docstring); 1 outside the response. Each strategy reads only its
    own signals (:data:`NEEDS`); ``random`` those of ``control_for``, whose γ it shuffles."""
    rows = signals.rows.bool()
    if strategy == "none":
        return torch.ones(rows.shape, device=rows.device)
    if strategy == "random":
        if control_for not in CONTROLLED:
            raise ValueError(f"the random control matches one of {', '.join(CONTROLLED)}, got {control_for!r}")
        matched = credit_gammas(
            control_for, signals, q, gamma_amp, tau_waad, tau_delta, alpha, neighbourhood, add_local
        )  # fmt: skip
        return shuffled_within_rows(matched, rows, generator)
    if strategy == "entropy":
        if signals.entropy is None:
            raise ValueError("the entropy strategy needs the token entropies")
        return 1 + (gamma_amp - 1) * top_fraction(signals.entropy, rows, q)
    delta, delta_valid = attention_jumps(signals.waad, rows)
    preplan = top_fraction(delta, delta_valid, q)
    if strategy == "local":
        return 1 + (gamma_amp - 1) * preplan
    anchors = top_fraction(signals.fai, rows & signals.fai_defined, q)
    if strategy == "global":
        return 1 + (gamma_amp - 1) * anchors
    if strategy != "coupled":
        raise ValueError(f"unknown credit strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    tau_w = masked_median(signals.waad, rows) if tau_waad == "median" else float(tau_waad)
    tau_d = masked_median(delta, delta_valid) if tau_delta == "median" else float(tau_delta)
    gammas = coupled_gammas(signals.waad, delta, delta_valid, anchors, gamma_amp, tau_w, tau_d, alpha, neighbourhood)
    if add_local:
        gammas = torch.maximum(gammas, 1 + (gamma_amp - 1) * preplan)
    return gammas
