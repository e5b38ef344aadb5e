"""DESIGNER's diversity metrics (zoo/synth/metrics.py) on known-answer fixtures (notes §3.7) and against brute
force."""

import math

import pytest
import torch

from zoo.synth.metrics import (
    kmeans_inertia,
    mean_cosine_distance,
    mean_l2_distance,
    nearest_neighbour_distance,
    radius,
)


def _brute(x):
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    cosine = 1 - unit @ unit.T
    l2 = torch.cdist(x.double(), x.double())
    upper = torch.triu(torch.ones(len(x), len(x), dtype=torch.bool), 1)
    nn = cosine + torch.diag(torch.full((len(x),), math.inf, dtype=torch.float64))
    return cosine[upper].mean().item(), l2[upper].mean().item(), nn.min(1).values.mean().item()


def test_identical_vectors_and_an_orthonormal_basis():
    same = torch.ones(6, 4) * 0.3
    assert mean_cosine_distance(same) == pytest.approx(0, abs=1e-12)
    assert nearest_neighbour_distance(same) == pytest.approx(0, abs=1e-12)
    assert mean_l2_distance(same) == 0 and radius(same) == 0
    basis = torch.eye(5)
    assert mean_cosine_distance(basis) == pytest.approx(1)
    assert mean_l2_distance(basis) == pytest.approx(math.sqrt(2))
    assert nearest_neighbour_distance(basis) == pytest.approx(1)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_closed_form_and_chunked_metrics_match_brute_force(chunk):
    x = torch.randn(37, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    cosine, l2, nn = _brute(x)
    assert mean_cosine_distance(x) == pytest.approx(cosine, rel=1e-10)
    assert mean_l2_distance(x, chunk=chunk) == pytest.approx(l2, rel=1e-10)
    assert nearest_neighbour_distance(x, chunk=chunk) == pytest.approx(nn, rel=1e-10)


def test_radius_is_the_geometric_mean_of_the_spreads():
    x = torch.randn(20000, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 4.0, 0.25])
    assert radius(x) == pytest.approx(1.0, rel=0.02)  # (1 * 4 * 0.25) ** (1/3)
    assert radius(torch.tensor([[0.0, 1.0], [2.0, 3.0]])) == pytest.approx(1.0)  # stds 1 and 1


def test_kmeans_inertia_finds_separated_clusters():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres]).double()
    truth = sum(((part - part.mean(0)) ** 2).sum().item() for part in x.split(50))
    assert kmeans_inertia(x, 3, seed=0) == pytest.approx(truth, rel=1e-9)
    assert kmeans_inertia(x, 1) == pytest.approx(((x - x.mean(0)) ** 2).sum().item(), rel=1e-9)
    assert kmeans_inertia(x, len(x)) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="k must lie"):
        kmeans_inertia(x, 0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_cosine_distance(torch.ones(1, 3))


def test_float32_blocks_agree_with_float64():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(3))
    assert mean_l2_distance(x, 64, torch.float32) == pytest.approx(mean_l2_distance(x, 64), rel=1e-5)
    assert nearest_neighbour_distance(x, 64, torch.float32) == pytest.approx(
        nearest_neighbour_distance(x, 64), rel=1e-5
    )


@pytest.mark.gpu
def test_the_gpu_gives_the_cpu_figures():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(3000, 64, generator=torch.Generator().manual_seed(4))
    for fn in (mean_cosine_distance, mean_l2_distance, nearest_neighbour_distance, radius):
        assert fn(x.cuda()) == pytest.approx(fn(x), rel=1e-9), fn.__name__
    assert kmeans_inertia(x.cuda(), 8, seed=1) == pytest.approx(kmeans_inertia(x, 8, seed=1), rel=1e-6)
