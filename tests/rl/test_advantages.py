"""Advantage estimators against hand-computed values and a plain-Python reimplementation."""

import math
import random

import pytest
import torch

from zoo.rl.advantages import (
    dr_grpo_advantages,
    gae,
    grpo_advantages,
    masked_whiten,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)


def test_grpo_by_hand():
    a = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2, eps=0.0)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(a, torch.tensor([s, -s, -s, s]))


def test_rloo_and_dr_grpo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(rloo_advantages(rewards, 3), torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    third = 1 / 3
    torch.testing.assert_close(dr_grpo_advantages(rewards, 3), torch.tensor([2 * third, -third, -third, 0, 0, 0]))


def _python_group_stats(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, std


@pytest.mark.parametrize("group_size", [2, 4, 7])
def test_sequence_estimators_match_plain_python(group_size):
    rng = random.Random(group_size)
    rewards = [rng.choice([0.0, 1.0, 0.5, rng.random()]) for _ in range(5 * group_size)]
    grpo = grpo_advantages(torch.tensor(rewards, dtype=torch.float64), group_size).tolist()
    rloo = rloo_advantages(torch.tensor(rewards, dtype=torch.float64), group_size).tolist()
    for g in range(5):
        group = rewards[g * group_size : (g + 1) * group_size]
        mean, std = _python_group_stats(group)
        for i, r in enumerate(group):
            assert grpo[g * group_size + i] == pytest.approx((r - mean) / (std + 1e-6))
            others = (sum(group) - r) / (group_size - 1)
            assert rloo[g * group_size + i] == pytest.approx(r - others)


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="groups of 3"):
        grpo_advantages(torch.zeros(4), 3)


def test_reinforce_pp_baseline_whitens_over_response_tokens():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    a = reinforce_pp_baseline_advantages(rewards, 2, mask)
    valid = a[mask.bool()]
    assert valid.mean().abs() < 1e-6 and valid.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)  # Bessel
    assert (a[~mask.bool()] == 0).all()
    assert a[0, 0] > 0 > a[1, 0]  # the better sample of the first group is pushed up
    assert torch.allclose(a[2, :3], a[3, 0].expand(3))  # a tied group: equal, at the batch mean's offset


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = masked_whiten(values, mask)
    # mean 2, Bessel-corrected variance ((1 + 0 + 1) / (3 - 1)) = 1, eps 1e-8: the reference implementations' numbers
    torch.testing.assert_close(out[mask.bool()], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-7, rtol=0)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(returns, torch.ones(1, 3))
    td, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(td, torch.tensor([[0.1, 0.1, 0.3]]))


def test_gae_matches_a_plain_python_recursion_with_padding():
    rng = random.Random(0)
    B, T, gamma, lam = 4, 9, 0.97, 0.9
    lengths = [9, 5, 1, 7]
    rewards = torch.tensor([[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)], dtype=torch.float64)
    values = torch.tensor([[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)], dtype=torch.float64)
    mask = torch.tensor([[1 if t < n else 0 for t in range(T)] for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            running = rewards[b, t].item() + gamma * next_value - values[b, t].item() + gamma * lam * running
            assert advantages[b, t].item() == pytest.approx(running)
            assert returns[b, t].item() == pytest.approx(running + values[b, t].item())
        assert (advantages[b, n:] == 0).all() and (returns[b, n:] == 0).all()


def test_gae_carries_through_observation_tokens():
    """A multi-turn row: action tokens, two observation tokens (masked), action tokens. γ = 1 and values 0 give
    every action token the final reward discounted by λ per action token after it; observation tokens do not count
    as steps and get nothing."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 1, 1, 1]])
    rewards = torch.zeros(1, 10)
    rewards[0, -1] = 1.0
    advantages, returns = gae(rewards, torch.zeros(1, 10), mask, gamma=1.0, lam=0.95)
    steps_after = torch.tensor([7, 6, 5, 4, 3, 0, 0, 2, 1, 0], dtype=torch.float32)
    expected = 0.95**steps_after * mask
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected)


def _action_gae(rewards, values, actions, gamma, lam):
    """GAE by hand over the listed action positions of one row, as one trajectory."""
    out, running, next_value = {}, 0.0, 0.0
    for t in reversed(actions):
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        out[t], next_value = running, values[t]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_on_multi_turn_rows_matches_a_recursion_over_action_tokens(dtype):
    """Random rows of prompt (masked), turns of actions separated by observations (masked) and padding (masked):
    advantages and returns equal a plain recursion over each row's action tokens; masked positions are 0, whatever
    rewards and values sit there."""
    rng = random.Random(1)
    B, T, gamma, lam = 6, 24, 0.9, 0.8
    rows = []
    for _ in range(B):
        row = [0] * rng.randint(0, 3)
        for _turn in range(rng.randint(1, 4)):
            row += [1] * rng.randint(1, 4) + [0] * rng.randint(0, 3)
        rows.append((row + [0] * T)[:T])
    mask = torch.tensor(rows)
    rewards = torch.randn(B, T, dtype=dtype, generator=torch.Generator().manual_seed(0))
    values = torch.randn(B, T, dtype=dtype, generator=torch.Generator().manual_seed(1))
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(B):
        actions = [t for t in range(T) if rows[b][t]]
        expected = _action_gae(rewards[b].tolist(), values[b].tolist(), actions, gamma, lam)
        for t in range(T):
            want = expected.get(t, 0.0)
            assert advantages[b, t].item() == pytest.approx(want, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(want + values[b, t].item() if t in expected else 0.0, abs=1e-5)
