"""Policy and value losses, per token, then aggregated. Shapes are (B, T) over response tokens; ``mask``
marks them with 1.

- PPO clip with separate ranges (DAPO's clip-higher, Yu et al. 2025): per token
  ``−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)``, ``ρ = exp(log π − log π_old)``.
- Truncated importance sampling for the rollout/trainer mismatch (Yao et al. 2025): the per-token loss is
  weighted by ``min(exp(log π_old − log π_rollout), C)``, where π_rollout is what the rollout engine sampled
  with and π_old the trainer's own log-probs of the same tokens before the update.
- KL to a frozen reference: ``k1 = log π − log π_ref``; ``k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1``
  (Schulman's non-negative unbiased estimator, as in GRPO).
- Entropy from logits: ``H = logsumexp(z) − Σ softmax(z)·z``.
- Clipped value loss: ``½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)``.

Aggregation (:func:`aggregate`): ``token_mean`` averages over every response token of the batch (DAPO);
``seq_mean_token_mean`` averages within each sequence, then over sequences (the original GRPO);
``seq_mean_token_sum`` sums within each sequence, divides by a fixed length, then averages (Dr. GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", max_length: int | None = None):
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "seq_mean_token_sum":
        return ((per_token * mask).sum(1) / (max_length or per_token.shape[1])).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


@dataclass
class PolicyLossStats:
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor
    approx_kl: torch.Tensor  # k3 estimate of KL(π_old ‖ π) over response tokens


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
) -> tuple[torch.Tensor, PolicyLossStats]:
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if rollout_logprobs is not None and tis_cap is not None:
        per_token = per_token * truncated_importance_weights(old_logprobs, rollout_logprobs, tis_cap)
    loss = aggregate(per_token, mask, aggregation, max_length)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        count = m.sum().clamp(min=1)
        stats = PolicyLossStats(
            clip_fraction=((clipped < unclipped).to(ratio.dtype) * m).sum() / count,
            ratio_mean=(ratio * m).sum() / count,
            approx_kl=((ratio - 1 - log_ratio) * m).sum() / count,
        )
    return loss, stats


def truncated_importance_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap).detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax of ``logits`` (..., V), per position."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    aggregation: str = "token_mean",
) -> torch.Tensor:
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return aggregate(per_token, mask, aggregation)
