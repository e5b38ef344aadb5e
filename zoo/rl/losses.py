"""Policy and value losses, per token, then aggregated. Shapes are (B, T) over response tokens; ``mask``
marks them with 1.

- The policy-gradient losses (PPO clip and the off-policy variants) are :mod:`zoo.rl.pg_variants`.
- KL to a frozen reference: ``k1 = log π − log π_ref``; ``k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1``
  (Schulman's non-negative unbiased estimator, as in GRPO), its log-ratio clamped to ±20 and the estimate to
  [−10, 10] as mature stacks do (one token the policy has left behind must not dominate the batch).
- Entropy from logits: ``H = logsumexp(z) − Σ softmax(z)·z``.
- Clipped value loss: ``½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)``.

Aggregation (:func:`aggregate`): ``token_mean`` averages over every response token of the batch (DAPO);
``seq_mean_token_mean`` averages within each sequence, then over sequences (the original GRPO);
``seq_mean_token_sum`` sums within each sequence, divides by a fixed length, then averages (Dr. GRPO).

The denominators that reach across sequences (the batch's response tokens, its number of sequences) are
:class:`Totals`: by default the aggregated batch's own; a micro-batch of a minibatch passes the minibatch's, so that
its loss is its share of the minibatch's and the micro-batches' losses (and gradients) sum to the unsplit one. The
denominators within a sequence stay local: a sequence is never split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


@dataclass(frozen=True)
class Totals:
    """What an aggregation divides by across sequences: the response tokens (a tensor, so that counting them never
    waits for the device) and the number of sequences."""

    tokens: torch.Tensor
    sequences: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> Totals:
        return cls(mask.sum().clamp(min=1), max(mask.shape[0], 1))


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    max_length: int | None = None,
    totals: Totals | None = None,
):
    mask = mask.to(per_token.dtype)
    totals = totals or Totals.of(mask)
    if mode == "token_mean":
        return (per_token * mask).sum() / totals.tokens.to(per_token.dtype)
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / totals.sequences
    if mode == "seq_mean_token_sum":
        return ((per_token * mask).sum(1) / (max_length or per_token.shape[1])).sum() / totals.sequences
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


def token_share(values: torch.Tensor, mask: torch.Tensor, totals: Totals | None = None) -> torch.Tensor:
    """``Σ values·mask / tokens``: a per-token statistic's mean over the response tokens, additive over micro-batches
    given their minibatch's totals."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (totals or Totals.of(mask)).tokens.to(values.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = (ref_logprobs - logprobs).clamp(-20, 20)
        return (torch.exp(log_ratio) - log_ratio - 1).clamp(-10, 10)
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
    totals: Totals | None = None,
) -> torch.Tensor:
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return aggregate(per_token, mask, aggregation, totals=totals)
