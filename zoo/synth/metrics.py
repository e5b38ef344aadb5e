"""Diversity metrics of a set of embeddings (DESIGNER's analysis, arXiv:2508.12726; notes §3.4), for N vectors
``e_i`` in R^d, in float64 accumulators, chunked so that no N x N matrix is ever held:

- ``mean_cosine_distance``: 2/(N(N-1)) Σ_{i<j} (1 - cos(e_i, e_j)), in closed form for unit vectors:
  the mean pairwise cosine similarity is (||Σ_i u_i||² - N) / (N(N-1)), O(N·d);
- ``mean_l2_distance``: 2/(N(N-1)) Σ_{i<j} ||e_i - e_j||, O(N²·d) in blocks of ``chunk`` rows;
- ``nearest_neighbour_distance``: (1/N) Σ_i min_{j≠i} (1 - cos(e_i, e_j)), in blocks;
- ``kmeans_inertia``: Σ_i min_j ||e_i - c_j||² after Lloyd's K-means from a k-means++ start (seeded; ``k`` is
  not published: a parameter);
- ``radius``: the geometric mean of the per-dimension standard deviations (population std), in log space.

Everything runs on the embeddings' device (a GPU when they are on one). The O(N²) metrics take ``dtype``: float64
(exact; the default) or float32 for speed at scale (blocks in float32, sums still in float64).
"""

from __future__ import annotations

import torch


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.double(), dim=1)


def _pairs(n: int) -> int:
    if n < 2:
        raise ValueError(f"pairwise metrics need at least 2 vectors, got {n}")
    return n * (n - 1) // 2


def mean_cosine_distance(embeddings: torch.Tensor) -> float:
    unit = _unit(embeddings)
    n = unit.shape[0]
    total = unit.sum(0)
    similarity = (total @ total - n) / (2 * _pairs(n))
    return float(1 - similarity)


def mean_l2_distance(embeddings: torch.Tensor, chunk: int = 4096, dtype: torch.dtype = torch.float64) -> float:
    x = embeddings.to(dtype)
    n, total = x.shape[0], torch.zeros((), dtype=torch.float64, device=x.device)
    pairs = _pairs(n)
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        distances = torch.cdist(block, x[start:])  # the block against itself and every later row
        total += distances.triu(1).sum(dtype=torch.float64)  # i < j only
    return float(total / pairs)


def nearest_neighbour_distance(
    embeddings: torch.Tensor, chunk: int = 4096, dtype: torch.dtype = torch.float64
) -> float:
    unit = _unit(embeddings).to(dtype)
    n = unit.shape[0]
    _pairs(n)
    total = torch.zeros((), dtype=torch.float64, device=unit.device)
    for start in range(0, n, chunk):
        similarity = unit[start : start + chunk] @ unit.T
        rows = torch.arange(similarity.shape[0], device=unit.device)
        similarity[rows, rows + start] = -torch.inf  # not itself
        total += (1 - similarity.max(1).values.double()).sum()
    return float(total / n)


def kmeans_inertia(embeddings: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> float:
    x = embeddings.double()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=generator)]
    nearest = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: the next centre drawn with probability proportional to squared distance
        if not nearest.sum() > 0:  # every point sits on a centre already (identical texts): any point will do
            chosen = torch.randint(n, (1,), generator=generator).to(x.device)
        else:
            chosen = torch.multinomial((nearest / nearest.sum()).cpu(), 1, generator=generator).to(x.device)
        centres = torch.cat([centres, x[chosen]])
        nearest = torch.minimum(nearest, ((x - x[chosen]) ** 2).sum(1))
    for _ in range(iterations):
        assignment = torch.cdist(x, centres).argmin(1)
        moved = torch.zeros_like(centres).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k).to(x.dtype)[:, None]
        updated = torch.where(counts > 0, moved / counts.clamp(min=1), centres)  # an empty cluster keeps its centre
        if torch.equal(updated, centres):
            break
        centres = updated
    return float((torch.cdist(x, centres).min(1).values ** 2).sum())


def radius(embeddings: torch.Tensor) -> float:
    std = embeddings.double().std(0, unbiased=False)
    return float(torch.exp(torch.log(std).mean()))


METRICS = ("mean_cosine_distance", "mean_l2_distance", "nearest_neighbour_distance", "kmeans_inertia", "radius")


def diversity(
    embeddings: torch.Tensor, k: int = 16, chunk: int = 4096, dtype: torch.dtype = torch.float64, seed: int = 0
) -> dict[str, float]:
    """All five metrics of ``embeddings`` (on their device)."""
    return {
        "mean_cosine_distance": mean_cosine_distance(embeddings),
        "mean_l2_distance": mean_l2_distance(embeddings, chunk, dtype),
        "nearest_neighbour_distance": nearest_neighbour_distance(embeddings, chunk, dtype),
        "kmeans_inertia": kmeans_inertia(embeddings, min(k, len(embeddings)), seed=seed),
        "radius": radius(embeddings),
    }
