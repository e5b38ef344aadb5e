"""AsyPPO's critic ensemble (zoo/rl/critic_ensemble.py) from the algebra: exact mask fractions on known σ,
thresholds blind to padding, disjoint and covering shards, the ensemble's value and spread."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.rl.critic_ensemble import critic_shards, ensemble_values, uncertainty_masks


def _known_sigma(n_valid: int, pad: int, seed: int):
    """Distinct σ on ``n_valid`` tokens spread over rows, padding (with wild σ) after each row's tokens."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randperm(n_valid, generator=generator).float() / n_valid
    rows = 4
    per_row = -(-n_valid // rows)
    sigma = torch.full((rows, per_row + pad), 0.0)
    valid = torch.zeros(rows, per_row + pad)
    wild = torch.randn(rows, per_row + pad, generator=generator) * 100
    for i in range(n_valid):
        sigma[i // per_row, i % per_row] = values[i]
        valid[i // per_row, i % per_row] = 1
    return torch.where(valid.bool(), sigma, wild), valid


@pytest.mark.parametrize("n, low, high", [(50, 0.2, 0.2), (40, 0.25, 0.1), (10, 0.5, 0.3), (30, 0.0, 0.2)])
def test_the_masks_drop_exactly_the_lowest_and_highest_fractions(n, low, high):
    sigma, valid = _known_sigma(n, pad=3, seed=n)
    keep_advantage, keep_entropy = uncertainty_masks(sigma, valid, low, high)
    ranked = sigma[valid.bool()].argsort()
    flat = valid.bool().flatten().nonzero().squeeze(1)
    lowest = set(flat[ranked[: round(low * n)]].tolist())
    highest = set(flat[ranked[n - round(high * n) :]].tolist()) if high else set()
    dropped_a = {i for i in flat.tolist() if keep_advantage.flatten()[i] == 0}
    dropped_h = {i for i in flat.tolist() if keep_entropy.flatten()[i] == 0}
    assert dropped_a == lowest and dropped_h == highest
    assert keep_advantage[~valid.bool()].eq(0).all() and keep_entropy[~valid.bool()].eq(0).all()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), pad=st.integers(0, 6), low=st.floats(0.01, 0.9), seed=st.integers(0, 1000))
def test_padding_never_moves_the_thresholds(n, pad, low, seed):
    sigma, valid = _known_sigma(n, pad, seed)
    keep, _ = uncertainty_masks(sigma, valid, low, 0.0)
    squeezed = sigma[valid.bool()][None]
    alone, _ = uncertainty_masks(squeezed, torch.ones_like(squeezed), low, 0.0)
    assert torch.equal(keep[valid.bool()], alone[0])
    dropped = int((alone == 0).sum())  # σ < quantile(σ, low): the values below position low·(n−1) of the sorted σ
    assert (
        abs(dropped - low * (n - 1)) <= 1
        and (squeezed[alone == 0].max() if dropped else -1) < squeezed[alone == 1].min()
    )


def test_critics_that_agree_everywhere_mask_nothing():
    sigma, valid = torch.zeros(3, 6), torch.ones(3, 6)
    keep_advantage, keep_entropy = uncertainty_masks(sigma, valid, 0.2, 0.2)
    assert torch.equal(keep_advantage, valid) and torch.equal(keep_entropy, valid)


def test_no_fraction_means_no_mask_and_bad_fractions_are_refused():
    sigma, valid = _known_sigma(20, 2, 0)
    keep_advantage, keep_entropy = uncertainty_masks(sigma, valid, 0.0, 0.0)
    assert torch.equal(keep_advantage, valid) and torch.equal(keep_entropy, valid)
    with pytest.raises(ValueError, match="mask fractions"):
        uncertainty_masks(sigma, valid, 1.0, 0.0)


@pytest.mark.parametrize("critics", [1, 2, 3])
@pytest.mark.parametrize("mode", ["responses_within_prompt", "whole_prompts"])
def test_shards_are_disjoint_cover_every_sample_and_are_even(critics, mode):
    prompt_index = torch.tensor([3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 7, 7, 7, 7, 7, 1, 1, 1, 1, 1])
    shards = critic_shards(prompt_index, critics, mode)
    assert shards.shape == prompt_index.shape and set(shards.tolist()) <= set(range(critics))
    for p in prompt_index.unique().tolist():
        mine = shards[prompt_index == p]
        counts = torch.bincount(mine, minlength=critics)
        if mode == "responses_within_prompt":  # every critic sees the prompt, responses split evenly
            assert counts.max() - counts.min() <= 1 and (counts > 0).all() == (critics <= 5)
        else:  # the whole prompt goes to one critic
            assert len(mine.unique()) == 1
    if mode == "whole_prompts":  # prompts dealt round-robin in order of first appearance: 3, 0, 7, 1
        assert [shards[prompt_index == p][0].item() for p in (3, 0, 7, 1)] == [i % critics for i in range(4)]


def test_the_ensemble_value_and_spread():
    values = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]]])  # (M=2, N=1, L=2)
    mean, sigma = ensemble_values(values, "mean")
    assert torch.equal(mean, torch.tensor([[2.0, 2.0]])) and torch.equal(sigma, torch.tensor([[1.0, 0.0]]))
    minimum, _ = ensemble_values(values, "min")
    assert torch.equal(minimum, torch.tensor([[1.0, 2.0]]))
    single = torch.randn(1, 3, 5)
    assert torch.equal(ensemble_values(single)[1], torch.zeros(3, 5))  # one critic: no spread
    same = single.expand(4, 3, 5)
    value, spread = ensemble_values(same)
    assert torch.allclose(value, single[0]) and torch.equal(spread, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="aggregate"):
        ensemble_values(values, "max")
