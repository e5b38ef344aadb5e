"""Advantage estimators. Rewards come one per sequence, ordered by prompt: the G samples of a prompt are
contiguous (``rewards.view(-1, G)``). Masks mark response tokens (B, T) with 1.

- GRPO (Shao et al. 2024, DeepSeekMath): ``A_i = (r_i − mean_g) / (std_g + ε)``, std unbiased over the group.
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): ``A_i = r_i − mean_g`` (no std).
- RLOO (Ahmadian et al. 2024): ``A_i = r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean_g)``.
- REINFORCE++-baseline (Hu et al. 2025): ``r_i − mean_g`` on every response token, then whitened over all
  response tokens of the batch: ``(x − mean) / sqrt(var + 1e-8)`` with the Bessel-corrected variance, as the
  reference implementations (OpenRLHF, verl) whiten.
- GAE (Schulman et al. 2016): ``δ_t = r_t + γ·V_{t+1} − V_t``, ``A_t = δ_t + γλ·A_{t+1}``, returns ``A + V``;
  the value after the last response token is 0. The recursion runs over the masked-in (action) tokens of a row as
  one trajectory: ``t + 1`` is the row's next action token, so a multi-turn row's observation tokens (masked out
  between turns) are skipped, the running advantage and the next value carrying through them; rewards on masked
  tokens are ignored (put a turn's reward on its last action token).
"""

from __future__ import annotations

import torch

EPS = 1e-6  # GRPO's std guard
WHITEN_EPS = 1e-8  # the reference implementations' whitening guard


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    if group_size < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    groups = _groups(rewards, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)).flatten()


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    groups = _groups(rewards, group_size)
    return (groups - groups.mean(1, keepdim=True)).flatten()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    groups = _groups(rewards, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).flatten()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """Shift and scale ``values`` to mean 0 and (Bessel-corrected) std 1 over the positions where ``mask`` is 1."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    variance = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: int, mask: torch.Tensor) -> torch.Tensor:
    """Token-level (B, T) advantages."""
    centred = dr_grpo_advantages(rewards, group_size)
    return masked_whiten(centred[:, None] * mask.to(centred.dtype), mask)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level ``(advantages, returns)`` from token rewards and values (B, T), zero outside ``mask``; each row's
    masked-in tokens are one trajectory (see the module docstring)."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(running)  # V of the row's next action token; 0 after its last
    for t in reversed(range(values.shape[1])):
        acting = mask[:, t].bool()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(acting, delta + gamma * lam * running, running)
        next_value = torch.where(acting, values[:, t], next_value)
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def expand_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence advantages (B,) on every response token (B, T)."""
    return advantages[:, None] * mask.to(advantages.dtype)


SEQUENCE_ESTIMATORS = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}
