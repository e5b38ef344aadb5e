"""AsyPPO's critic ensemble (zoo/rl/methods/asyppo.py) from the algebra: exact mask fractions on known σ,
thresholds blind to padding, disjoint and covering shards, the ensemble's value and spread."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.rl.methods.asyppo import critic_shards, ensemble_values, linear_quantile, uncertainty_masks


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_tokens_tied_at_a_threshold_keep_their_terms_in_every_dtype(dtype):
    """Ten tokens at σ = 0.1 and thirty at 0.7: both quantiles fall between tied values, so nothing is masked,
    whatever σ's dtype (a float32 threshold against float64 σ would drop all 10 and all 30)."""
    sigma = torch.tensor([0.1] * 10 + [0.7] * 30, dtype=dtype)[torch.randperm(40)].view(4, 10)
    keep_advantage, keep_entropy = uncertainty_masks(sigma, torch.ones(4, 10), 0.2, 0.2)
    assert keep_advantage.sum() == 40 and keep_entropy.sum() == 40


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 300),
    q=st.floats(0.0, 1.0),
    ties=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
)
def test_the_quantile_is_torchs(n, q, ties, dtype, seed):
    """The selection-based quantile equals ``torch.quantile`` (linear), ties included (to the last bit of float32:
    torch finds the position q · (n − 1) in the values' dtype, zoo in float64)."""
    values = torch.randint(0, max(1, n // ties), (n,), generator=torch.Generator().manual_seed(seed)).to(dtype) / 7
    torch.testing.assert_close(linear_quantile(values, q), torch.quantile(values, q))


def test_populations_past_torch_quantiles_limit():
    """``mask_population: batch`` at the papers' batch sizes: more than 2^24 tokens, which ``torch.quantile``
    refuses; the masks drop the tokens below position low · (n − 1) and above (1 − high) · (n − 1)."""
    n = 2**24 + 8
    sigma = torch.arange(n, dtype=torch.float64) / n  # distinct, already ordered
    keep_advantage, keep_entropy = uncertainty_masks(sigma, torch.ones(n, dtype=torch.bool), 0.25, 0.1)
    assert (keep_advantage == 0).sum() == math.floor(0.25 * (n - 1)) + 1
    assert (keep_entropy == 0).sum() == n - 1 - math.floor(0.9 * (n - 1))


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


def test_responses_are_dealt_within_each_prompt_when_prompts_interleave():
    """Rows of two prompts interleaved (as a queue or asynchronous sampler returns them): every critic still gets
    half of each prompt's responses, not one prompt each."""
    prompt_index = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 0, 1])
    shards = critic_shards(prompt_index, 2, "responses_within_prompt")
    for p in (0, 1, 2):
        assert torch.bincount(shards[prompt_index == p], minlength=2).tolist() in ([3, 2], [2, 3], [1, 1])
    assert shards[prompt_index == 0].tolist() == [0, 1, 0, 1, 0]  # dealt in row order within the prompt


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
