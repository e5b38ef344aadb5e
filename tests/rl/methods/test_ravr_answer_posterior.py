"""RAVR's theory (notes §5.2) exactly on enumerated toy latent models and by Monte Carlo from prior samples, and the
path utility s(z) against a hand computation on a tiny model."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.models import build_model, config_from_dict
from zoo.rl.methods.ravr_answer_posterior import (
    answer_posterior,
    competence,
    estimated_posterior_utility,
    mass_ratio,
    posterior_utility,
    utility_variance,
)
from zoo.rl.methods.ravr_answer_utility import answer_utility


@settings(max_examples=100, deadline=None)
@given(paths=st.integers(2, 32), seed=st.integers(0, 2**16), tau=st.floats(0.05, 0.95))
def test_the_posterior_raises_expected_utility_by_var_over_mu_and_amplifies_mass(paths, seed, tau):
    generator = torch.Generator().manual_seed(seed)
    prior = torch.rand(3, paths, generator=generator, dtype=torch.float64) + 1e-3
    prior = prior / prior.sum(-1, keepdim=True)
    utility = torch.rand(3, paths, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    mu = competence(prior, utility)
    posterior = answer_posterior(prior, utility)
    torch.testing.assert_close(posterior.sum(-1), torch.ones(3, dtype=torch.float64))
    gained = posterior_utility(prior, utility)
    torch.testing.assert_close(gained, mu + utility_variance(prior, utility) / mu)
    assert (gained >= mu - 1e-12).all()
    ratio = mass_ratio(prior, utility, tau)
    defined = ~torch.isnan(ratio)
    assert (ratio[defined] >= tau / mu[defined] - 1e-9).all()


def test_constant_utility_gains_nothing():
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    utility = torch.full((3,), 0.4, dtype=torch.float64)
    assert math.isclose(float(posterior_utility(prior, utility)), 0.4)
    torch.testing.assert_close(answer_posterior(prior, utility), prior)


def test_monte_carlo_estimates_converge_to_the_exact_values():
    generator = torch.Generator().manual_seed(0)
    prior = torch.softmax(torch.randn(16, generator=generator, dtype=torch.float64), 0)
    utility = torch.rand(16, generator=generator, dtype=torch.float64)
    exact_mu, exact_gain = float(competence(prior, utility)), float(posterior_utility(prior, utility))
    draws = 1_000_000
    s = utility[torch.multinomial(prior, draws, replacement=True, generator=generator)]  # prior samples only
    from_posterior = utility[torch.multinomial(answer_posterior(prior, utility), draws, True, generator=generator)]
    assert abs(float(s.mean()) - exact_mu) < 0.005
    assert abs(float(estimated_posterior_utility(s)) - exact_gain) < 0.005
    assert abs(float(from_posterior.mean()) - exact_gain) < 0.005
    assert exact_gain > exact_mu + 0.01  # the gain is there to be estimated


def test_path_utility_is_the_geometric_mean_answer_probability_by_hand():
    torch.manual_seed(0)
    model = build_model(config_from_dict(dict(arch="gpt_neox", vocab_size=17, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32)))  # fmt: skip
    contexts, answers, cue = [[3, 4, 5, 6, 7], [6], [2]], [[8, 9], [10], [12]], [11]  # 8, 3 and 3 tokens
    got = answer_utility(model, contexts, answers, cue)
    assert model.training  # restored
    torch.testing.assert_close(answer_utility(model, contexts, answers, cue, size=1), got, rtol=1e-6, atol=0)
    packed = answer_utility(model, contexts, answers, cue, packed=True)  # packed rows: 8 | 3 + 3
    torch.testing.assert_close(packed, got, rtol=1e-5, atol=0)
    for i, (context, answer) in enumerate(zip(contexts, answers, strict=True)):
        prefix = context + cue
        logprob = 0.0
        for j, token in enumerate(answer):
            with torch.no_grad():
                probabilities = torch.softmax(model(torch.tensor([prefix + answer[:j]]))[0, -1], -1)
            logprob += math.log(float(probabilities[token]))
        assert math.isclose(float(got[i]), math.exp(logprob / len(answer)), rel_tol=1e-5)


def test_the_high_utility_set_includes_paths_exactly_at_tau():
    """Z_τ = {z : s(z) ≥ τ}: a path with s = τ belongs to it."""
    prior, utility = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.2, 0.5, 0.8])
    mu = 0.5 * 0.2 + 0.25 * 0.5 + 0.25 * 0.8
    expected = ((0.25 * 0.5 + 0.25 * 0.8) / mu) / 0.5  # q(Z) / p(Z) over the paths at 0.5 and 0.8
    torch.testing.assert_close(mass_ratio(prior, utility, 0.5), torch.tensor(expected))
