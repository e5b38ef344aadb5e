"""The loop probes against their definitions, and on recursive and MeSH models."""

import math

import pytest
import torch

from zoo.analysis.probes import cka_rbf, figures, loop_probes, normalized_spectrum, rbf_gram, relative_update
from zoo.models import MeSH, MeSHConfig, RecursiveConfig, RecursiveGPTNeoX


def test_relative_update_of_a_doubling_is_two_thirds():
    h = torch.randn(3, 5, 4)
    torch.testing.assert_close(relative_update(h, 2 * h), torch.full((3,), 2 / 3))
    torch.testing.assert_close(relative_update(h, h), torch.zeros(3))


def _cka_by_the_textbook(x, y):
    """tr(K H L H) / sqrt(tr(K H K H) · tr(L H L H)) with the centring matrix H, float64."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n

    def gram(z):
        squared = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        return torch.exp(-squared / (2 * squared.median()))

    gram_x, gram_y = gram(x.double()), gram(y.double())
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(gram_x, gram_y) / math.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_cka_matches_the_textbook_formula_and_its_invariances():
    torch.manual_seed(0)
    x = torch.randn(40, 16, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(16, 12, dtype=torch.float64)) + 0.1 * torch.randn(40, 12, dtype=torch.float64)
    assert cka_rbf(x, y).item() == pytest.approx(_cka_by_the_textbook(x, y).item(), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert cka_rbf(x, 3.0 * x @ q).item() == pytest.approx(1.0, abs=1e-9)  # rotation and scale invariant
    assert cka_rbf(x, torch.randn(40, 16, dtype=torch.float64)).item() < 0.5
    assert torch.allclose(rbf_gram(x).diagonal(), torch.ones(40, dtype=torch.float64))


def test_spectrum_of_a_rank_two_matrix_collapses_after_two():
    torch.manual_seed(1)
    x = torch.randn(30, 2) @ torch.randn(2, 20)
    spectrum = normalized_spectrum(x, top=5)
    assert spectrum[0] == 1 and spectrum[1] > 1e-3 and spectrum[2:].max() < 1e-5
    assert (spectrum[:-1] >= spectrum[1:]).all()


@pytest.mark.parametrize("model_class, config_class", [(RecursiveGPTNeoX, RecursiveConfig), (MeSH, MeSHConfig)])
def test_probes_of_a_recursive_model(model_class, config_class):
    torch.manual_seed(2)
    model = model_class(
        config_class(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64, layout="1+1R3+1")
    ).eval()
    report = loop_probes(model, torch.randint(0, 64, (3, 60)))
    assert report.stages == ["prelude", "core1", "core2", "core3", "coda"]
    assert report.states == ["h_emb", "h0", "h1", "h2", "h3", "h_out"]
    torch.testing.assert_close(report.cka.diagonal(), torch.ones(6))
    assert torch.equal(report.cka, report.cka.T) and report.spectra.shape == (6, 32)
    scalars = report.scalars()
    assert "probe/update/core2" in scalars and "probe/cka/h1-h2" in scalars
    assert all(math.isfinite(v) for v in scalars.values())
    assert set(figures(report)) == {"probe/relative_update", "probe/cka", "probe/spectrum"}
