"""The answer-conditioned posterior over reasoning paths (RAVR, Lin et al. 2025, arXiv:2510.25206; the project's
notes §5.2), for a discrete set of paths z with prior probabilities p(z) = π(z | x) and utilities
s(z) = π(y* | x, z) ∈ [0, 1]. Pure tensor maths over the last dimension (paths); leading dimensions batch.

- competence ``μ = E_p[s] = π(y* | x)``;
- Bayes: ``q(z) = π(z | x, y*) = s(z)·p(z) / μ``;
- expected utility under the posterior: ``E_q[s] = E_p[s²] / μ = μ + Var_p(s) / μ ≥ μ`` (equal iff s is constant
  where p > 0);
- mass amplification: ``q(Z_τ) / p(Z_τ) ≥ τ / μ`` for ``Z_τ = {z : s(z) ≥ τ}``.

From G prior samples with utilities s_1..s_G the same quantities are estimated without the posterior:
``μ̂ = mean s``, ``Ê_q[s] = mean s² / mean s`` (self-normalised importance weights s/μ̂), what the RAVR module
logs beside the utilities its posterior samples actually reach.
"""

from __future__ import annotations

import torch


def competence(prior: torch.Tensor, utility: torch.Tensor) -> torch.Tensor:
    """μ = Σ_z p(z) s(z)."""
    return (prior * utility).sum(-1)


def answer_posterior(prior: torch.Tensor, utility: torch.Tensor) -> torch.Tensor:
    """q(z) = s(z) p(z) / μ."""
    return prior * utility / competence(prior, utility)[..., None]


def posterior_utility(prior: torch.Tensor, utility: torch.Tensor) -> torch.Tensor:
    """E_q[s] = Σ_z q(z) s(z)."""
    return (answer_posterior(prior, utility) * utility).sum(-1)


def utility_variance(prior: torch.Tensor, utility: torch.Tensor) -> torch.Tensor:
    """Var_p(s)."""
    mean = competence(prior, utility)
    return (prior * (utility - mean[..., None]) ** 2).sum(-1)


def mass_ratio(prior: torch.Tensor, utility: torch.Tensor, tau: float) -> torch.Tensor:
    """q(Z_τ) / p(Z_τ) for Z_τ = {z : s(z) ≥ τ} (NaN where p(Z_τ) = 0)."""
    high = (utility >= tau).to(prior.dtype)
    return (answer_posterior(prior, utility) * high).sum(-1) / (prior * high).sum(-1)


def estimated_posterior_utility(samples: torch.Tensor) -> torch.Tensor:
    """Ê_q[s] = mean(s²) / mean(s) from utilities of prior samples (last dimension)."""
    return (samples**2).mean(-1) / samples.mean(-1)
