"""The policy-gradient losses an RL module can train with (``module.algorithm.pg_variant``, options in
``module.algorithm.pg_options``): PPO and the off-policy objectives ROLL Flash trains asynchronously with (Lu et
al. 2025, arXiv:2510.11345 §3.3; ROLL's ``pg_variant`` table).

Three log-probs per completion token: ``π_θ`` the policy being updated; ``π_prox`` the *proximal* policy, the
trainer's own log-probs before this batch's updates (with one update per batch: ``π_θ`` detached); ``π_behav``
the rollout engine's, the policy that sampled the token (up to α versions older under asynchronous rollout, and
numerically apart from the trainer's even when synchronous). With ``A`` the advantage, ``s`` the completion's
reward, ``sg`` the stop-gradient, ``r = π_θ/π_prox`` and ``ρ = π_θ/π_behav``, per token:

- ``ppo``: ``−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)``; with ``dual_clip`` c > 1 (Ye et al. 2020) a
  negative-advantage token's loss is capped at ``−c·A``; times zoo's truncated train/infer weight
  ``min(π_prox/π_behav, tis_cap)`` (``module.algorithm.tis_cap``; None: off).
- ``decoupled_ppo`` (Hilton et al. 2022; ROLL's ``train_infer_correction``): the same clipped term, times the
  detached importance weight ``w = π_prox/π_behav`` at ``level`` granularity, ``token`` (per token),
  ``sequence`` (``exp Σ_t``, one per completion) or ``geometric`` (``exp mean_t``), capped above at ``cap``
  (1.2); with ``filter: [lo, hi]`` the tokens (or completions) whose uncapped weight leaves the range leave the
  loss.
- ``tis``: ``−sg(clamp(ρ, low, high))·A·log π_θ``, ``[low, high] = [0, 1]``.
- ``cispo`` (MiniMax-M1): ``−sg(clamp(ρ, 1 − ε_low, 1 + ε_high))·A·log π_θ`` (the module's clip range); with
  ``unified_mask`` the tokens with ``A > 0, ρ > 1 + ε_high`` or ``A < 0, ρ < 1 − ε_low`` leave the loss.
- ``topr`` (Le Roux et al. 2025): completions with ``s > 0`` ``−positive_weight·A·log π_θ`` (no importance
  weight), the others ``−negative_weight·sg(clamp(ρ, 0, 1))·A·log π_θ``.
- ``kimi15`` (Kimi k1.5): ``−A·log π_θ + (τ/2)·(log π_θ − log π_behav)²``, ``τ = 0.1``.
- ``gspo`` (Zheng et al. 2025, arXiv:2507.18071): the importance ratio of a whole completion, length-normalised,
  ``s = (π_θ(y)/π_prox(y))^(1/|y|) = exp(mean_t (log π_θ − log π_prox))``, clipped as PPO clips a token's:
  ``−min(s·A, clip(s, 1 − ε_low, 1 + ε_high)·A)``. Written per token in the paper's GSPO-token form,
  ``s_t = sg(s)·π_θ(y_t)/sg(π_θ(y_t))``: the value of every token is its completion's ``s`` and the gradient
  ``s·A·∇log π_θ(y_t)``, so with one advantage per completion and ``aggregation: seq_mean_token_mean`` (the paper's
  ``1/G Σ_i 1/|y_i| Σ_t``) the loss and gradient are the paper's sequence-level objective's; token-level
  advantages (credit assignment) enter per token. The paper's clip range is small, ``ε_low = 3e-4``,
  ``ε_high = 4e-4``: set ``module.algorithm.clip_low`` / ``clip_high``. No train/infer weight (``tis_cap`` does not
  apply): the sequence ratio already compares against the trainer's own pre-update log-probs.

Every log-ratio is clamped to ±20 before it is exponentiated (a token the sampler found nearly impossible must
not make an infinite weight). The per-token losses are aggregated as the module's other terms are
(:func:`zoo.rl.losses.aggregate`), over the response tokens: a token a variant leaves out (``filter``,
``unified_mask``) adds zero and still counts in the denominator, as CISPO's objective normalises by ``Σ|o_i|``
(MiniMax-M1, eq. 4). So a denominator never depends on the policy being updated, and a minibatch split into
micro-batches gives the unsplit loss and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.errors import ConfigError, config_section
from zoo.rl.losses import Totals, aggregate, token_share

LOG_RATIO_LIMIT = 20.0
LEVELS = ("token", "sequence", "geometric")


def _ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))


def truncated_importance_weights(proximal: torch.Tensor, behaviour: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(π_prox/π_behav, cap)`` per token, detached (truncated importance sampling, Yao et al. 2025)."""
    return _ratio(proximal - behaviour).clamp(max=cap).detach()


@dataclass
class PolicyLossStats:
    clip_fraction: torch.Tensor  # share of the response tokens whose weight a clip, cap or truncation changed
    ratio_mean: torch.Tensor  # mean π_θ/π_prox
    approx_kl: torch.Tensor  # k3 estimate of KL(π_prox ‖ π_θ) over response tokens


@dataclass
class PPOOptions:
    dual_clip: float | None = None  # c > 1: a negative-advantage token's loss is at most −c·A


@dataclass
class DecoupledPPOOptions:
    level: str = "token"  # token | sequence | geometric
    cap: float = 1.2
    filter: list[float] | None = None  # [lo, hi]: weights outside leave the loss (ROLL: [0.8, 1.2])
    dual_clip: float | None = None


@dataclass
class TISOptions:
    low: float = 0.0
    high: float = 1.0


@dataclass
class CISPOOptions:
    unified_mask: bool = False


@dataclass
class TOPROptions:
    positive_weight: float = 1.0
    negative_weight: float = 1.0


@dataclass
class Kimi15Options:
    tau: float = 0.1


@dataclass
class GSPOOptions:
    pass


@dataclass
class PolicyInputs:
    """What a minibatch's policy loss reads: log-probs (N, L) of the policy, the proximal policy and the sampler;
    advantages (N, L); the completions' rewards (N,); the response mask (N, L)."""

    logprobs: torch.Tensor
    proximal: torch.Tensor
    behaviour: torch.Tensor
    advantages: torch.Tensor
    scores: torch.Tensor | None
    mask: torch.Tensor


@dataclass
class PolicyLoss:
    per_token: torch.Tensor  # (N, L)
    mask: torch.Tensor  # (N, L) the tokens left in the loss
    clipped: torch.Tensor  # (N, L) bool: where a clip, cap or truncation changed the token's weight
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token values to log, averaged over tokens


def _clipped_surrogate(x: PolicyInputs, clip_low: float, clip_high: float, dual_clip: float | None):
    ratio = _ratio(x.logprobs - x.proximal)
    unclipped = ratio * x.advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * x.advantages
    per_token = -torch.minimum(unclipped, clipped)
    changed = clipped < unclipped
    if dual_clip is not None:
        floor = -dual_clip * x.advantages  # only binds where A < 0
        capped = (x.advantages < 0) & (per_token > floor)
        per_token = torch.where(capped, floor, per_token)
        changed = changed | capped
    return per_token, changed


def ppo(x: PolicyInputs, o: PPOOptions, clip_low: float, clip_high: float, tis_cap: float | None) -> PolicyLoss:
    per_token, changed = _clipped_surrogate(x, clip_low, clip_high, o.dual_clip)
    if tis_cap is not None:
        per_token = per_token * truncated_importance_weights(x.proximal, x.behaviour, tis_cap)
    return PolicyLoss(per_token, x.mask, changed)


def train_infer_weights(
    proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """The uncapped importance weights π_prox/π_behav (N, L) at ``level`` granularity (a completion's weight on
    each of its tokens for ``sequence`` and ``geometric``)."""
    log_ratio = (proximal - behaviour) * mask
    if level == "token":
        return _ratio(log_ratio)
    total = log_ratio.sum(1, keepdim=True)
    if level == "geometric":
        total = total / mask.sum(1, keepdim=True).clamp(min=1)
    return _ratio(total).expand_as(proximal)


def decoupled_ppo(x: PolicyInputs, o: DecoupledPPOOptions, clip_low: float, clip_high: float, _=None) -> PolicyLoss:
    per_token, changed = _clipped_surrogate(x, clip_low, clip_high, o.dual_clip)
    with torch.no_grad():
        weights = train_infer_weights(x.proximal, x.behaviour, x.mask, o.level)
        mask = x.mask
        if o.filter is not None:
            lo, hi = o.filter
            mask = mask * ((weights >= lo) & (weights <= hi)).to(mask.dtype)
    extras = {"policy/train_infer_weight": weights, "policy/filtered_fraction": (x.mask - mask).to(weights.dtype)}
    return PolicyLoss(per_token * weights.clamp(max=o.cap), mask, changed | (weights > o.cap), extras)


def tis(x: PolicyInputs, o: TISOptions, *_) -> PolicyLoss:
    ratio = _ratio(x.logprobs - x.behaviour).detach()
    weight = ratio.clamp(o.low, o.high)
    return PolicyLoss(-weight * x.advantages * x.logprobs, x.mask, weight != ratio)


def cispo(x: PolicyInputs, o: CISPOOptions, clip_low: float, clip_high: float, _=None) -> PolicyLoss:
    ratio = _ratio(x.logprobs - x.behaviour).detach()
    weight = ratio.clamp(1 - clip_low, 1 + clip_high)
    mask = x.mask
    if o.unified_mask:
        dropped = ((x.advantages > 0) & (ratio > 1 + clip_high)) | ((x.advantages < 0) & (ratio < 1 - clip_low))
        mask = mask * (~dropped).to(mask.dtype)
    return PolicyLoss(-weight * x.advantages * x.logprobs, mask, weight != ratio)


def topr(x: PolicyInputs, o: TOPROptions, *_) -> PolicyLoss:
    if x.scores is None:
        raise ValueError("pg_variant=topr needs the completions' rewards")
    ratio = _ratio(x.logprobs - x.behaviour).detach()
    positive = (x.scores > 0)[:, None]
    weight = torch.where(positive, torch.full_like(ratio, o.positive_weight), o.negative_weight * ratio.clamp(0, 1))
    return PolicyLoss(-weight * x.advantages * x.logprobs, x.mask, ~positive & (ratio > 1))


def kimi15(x: PolicyInputs, o: Kimi15Options, *_) -> PolicyLoss:
    drift = x.logprobs - x.behaviour
    per_token = -x.advantages * x.logprobs + o.tau / 2 * drift**2
    return PolicyLoss(per_token, x.mask, torch.zeros_like(x.mask, dtype=torch.bool))


def gspo(x: PolicyInputs, o: GSPOOptions, clip_low: float, clip_high: float, _=None) -> PolicyLoss:
    mask = x.mask.to(x.logprobs.dtype)
    mean_log_ratio = ((x.logprobs - x.proximal) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    sequence_ratio = _ratio(mean_log_ratio.detach())  # s, one per completion
    ratio = sequence_ratio * torch.exp(x.logprobs - x.logprobs.detach())  # s_t: the value s, the gradient s·∇log π
    unclipped = ratio * x.advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * x.advantages
    per_token = -torch.minimum(unclipped, clipped)
    extras = {"policy/sequence_ratio": sequence_ratio.expand_as(x.logprobs)}
    return PolicyLoss(per_token, x.mask, clipped < unclipped, extras)


PG_VARIANTS = {
    "ppo": (PPOOptions, ppo),
    "decoupled_ppo": (DecoupledPPOOptions, decoupled_ppo),
    "tis": (TISOptions, tis),
    "cispo": (CISPOOptions, cispo),
    "topr": (TOPROptions, topr),
    "kimi15": (Kimi15Options, kimi15),
    "gspo": (GSPOOptions, gspo),
}


def variant_options(variant: str, options: dict | None):
    """The options dataclass of ``variant`` from ``module.algorithm.pg_options``, checked."""
    if variant not in PG_VARIANTS:
        raise ConfigError(f"unknown module.algorithm.pg_variant {variant!r}; choose one of {', '.join(PG_VARIANTS)}")
    parsed = config_section(PG_VARIANTS[variant][0], options, f"module.algorithm.pg_options (pg_variant={variant})")
    dual = getattr(parsed, "dual_clip", None)
    if dual is not None and not dual > 1:
        raise ConfigError(f"module.algorithm.pg_options.dual_clip must be > 1, got {dual!r}")
    if isinstance(parsed, DecoupledPPOOptions):
        if parsed.level not in LEVELS:
            raise ConfigError(f"module.algorithm.pg_options.level {parsed.level!r} is not one of {', '.join(LEVELS)}")
        if parsed.filter is not None and not (len(parsed.filter) == 2 and parsed.filter[0] <= parsed.filter[1]):
            raise ConfigError(f"module.algorithm.pg_options.filter must be [lo, hi] with lo <= hi, got {parsed.filter}")
    if isinstance(parsed, TISOptions) and not 0 <= parsed.low <= parsed.high:
        raise ConfigError(f"module.algorithm.pg_options needs 0 <= low <= high, got {parsed.low}, {parsed.high}")
    return parsed


def policy_loss(
    variant: str,
    options,
    inputs: PolicyInputs,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    max_length: int | None = None,
    tis_cap: float | None = None,
    totals: Totals | None = None,
) -> tuple[torch.Tensor, PolicyLossStats, dict[str, torch.Tensor]]:
    """The aggregated loss of ``variant`` (options from :func:`variant_options`), its statistics against the
    proximal policy, and the variant's own logs; ``totals``: the minibatch's, for a micro-batch of it (means over
    tokens are then the micro-batch's share)."""
    result = PG_VARIANTS[variant][1](inputs, options, clip_low, clip_high, tis_cap)
    kept = result.mask.to(result.per_token.dtype)
    loss = aggregate(result.per_token * kept, inputs.mask, aggregation, max_length, totals)
    with torch.no_grad():
        mask = inputs.mask.to(inputs.logprobs.dtype)
        log_ratio = (inputs.logprobs - inputs.proximal).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        ratio = torch.exp(log_ratio)
        stats = PolicyLossStats(
            clip_fraction=token_share(result.clipped.to(mask.dtype), mask, totals),
            ratio_mean=token_share(ratio, mask, totals),
            approx_kl=token_share(ratio - 1 - log_ratio, mask, totals),
        )
        extras = {name: token_share(values, mask, totals) for name, values in result.extras.items()}
    return loss, stats, extras


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    rollout_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    max_length: int | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """The ``ppo`` variant on its own (without a sampler's log-probs no importance weight)."""
    behaviour = rollout_logprobs if rollout_logprobs is not None else old_logprobs
    inputs = PolicyInputs(logprobs, old_logprobs, behaviour, advantages, None, mask)
    cap = tis_cap if rollout_logprobs is not None else None
    options = PPOOptions(dual_clip)
    loss, stats, _ = policy_loss("ppo", options, inputs, clip_low, clip_high, aggregation, max_length, cap)
    return loss, stats
