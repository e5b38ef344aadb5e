"""Policy and value losses against hand-computed values and element-by-element reimplementations."""

import math
import random

import pytest
import torch

from zoo.rl.losses import aggregate, clipped_value_loss, kl_penalty, token_entropy
from zoo.rl.pg_variants import ppo_clip_loss


def test_clip_by_hand():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, stats = ppo_clip_loss(new, old, advantages, mask, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)  # both tokens clipped
    assert stats.clip_fraction.item() == 1.0
    loss, _ = ppo_clip_loss(new, old, advantages, mask, clip_low=0.6, clip_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 0.5) / 2)  # inside the range: the plain ratio
    loss, _ = ppo_clip_loss(new, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2)  # clip-higher widens the upper side only


def test_loss_and_gradient_match_elementwise_python():
    rng = random.Random(1)
    B, T = 3, 5
    new = torch.tensor([[rng.gauss(0, 0.3) for _ in range(T)] for _ in range(B)], dtype=torch.float64)
    old = torch.tensor([[rng.gauss(0, 0.3) for _ in range(T)] for _ in range(B)], dtype=torch.float64)
    adv = torch.tensor([[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    count = int(mask.sum())
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        per_seq, total = [], 0.0
        gradient = torch.zeros(B, T, dtype=torch.float64)
        for b in range(B):
            terms, length = [], int(mask[b].sum())
            weight = {
                "token_mean": 1 / count,
                "seq_mean_token_mean": 1 / (B * length),
                "seq_mean_token_sum": 1 / (B * 10),
            }
            for t in range(T):
                if mask[b, t]:
                    ratio = math.exp(new[b, t] - old[b, t])
                    unclipped, clipped = ratio * adv[b, t], min(max(ratio, 0.8), 1.25) * adv[b, t]
                    terms.append(-min(unclipped, clipped))
                    # d/d log π of −ρA is −ρA where the unclipped term is the minimum; a clipped ratio is constant
                    gradient[b, t] = -unclipped * weight[mode] if unclipped <= clipped else 0.0
            total += sum(terms)
            per_seq.append(sum(terms) / len(terms) if mode == "seq_mean_token_mean" else sum(terms) / 10)
        expected = total / count if mode == "token_mean" else sum(per_seq) / B
        logprobs = new.clone().requires_grad_(True)
        loss, _ = ppo_clip_loss(logprobs, old, adv, mask, 0.2, 0.25, mode, max_length=10)
        assert loss.item() == pytest.approx(expected), mode
        loss.backward()
        torch.testing.assert_close(logprobs.grad, gradient, msg=mode)
        assert (gradient != 0).any() and (gradient[mask.bool()] == 0).any()  # both branches were exercised


def test_truncated_importance_weights_scale_and_cap():
    old = torch.zeros(1, 2)
    rollout = torch.log(torch.tensor([[0.5, 0.1]]))  # the engine was less likely: weights 2 and 10, capped at 3
    adv = torch.ones(1, 2)
    loss, _ = ppo_clip_loss(old.clone(), old, adv, torch.ones(1, 2), rollout_logprobs=rollout, tis_cap=3.0)
    assert loss.item() == pytest.approx(-(2.0 + 3.0) / 2)


def test_k3_is_unbiased_and_non_negative():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6), 0)
    q = torch.softmax(torch.randn(6), 0)
    samples = torch.multinomial(p, 200_000, replacement=True)
    k3 = kl_penalty(p.log()[samples], q.log()[samples], "k3")
    k1 = kl_penalty(p.log()[samples], q.log()[samples], "k1")
    exact = (p * (p / q).log()).sum().item()
    assert (k3 >= 0).all()
    assert k3.mean().item() == pytest.approx(exact, rel=0.03)
    assert k1.mean().item() == pytest.approx(exact, rel=0.03)


def test_entropy_matches_torch_distributions():
    logits = torch.randn(4, 7, 11)
    torch.testing.assert_close(token_entropy(logits), torch.distributions.Categorical(logits=logits).entropy())


def test_value_loss_clips_around_the_old_value():
    old = torch.tensor([[1.0]])
    returns = torch.tensor([[2.0]])
    loss = clipped_value_loss(torch.tensor([[1.5]]), old, returns, torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * max(0.5**2, 0.8**2))


def test_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="sum_all"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "sum_all")
