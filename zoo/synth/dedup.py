"""Design-logic deduplication (DESIGNER, notes §3.3): a similarity graph with an edge wherever S_ij >= τ
(τ = 0.85), its connected components, and from each the centroid i* = argmax_{i∈C} Σ_{j∈C, j≠i} S_ij.

Choice: the edge test is ``S_ij >= τ`` (the paper's formula) by default; the third-party pseudocode writes a
strict ``>``, available as ``inclusive=False``. They differ only for a pair at exactly τ. Ties between centroid
candidates go to the lower index. The graph is found in blocks of rows (union-find over each block's edges),
so no N x N matrix is held; S is the cosine similarity of the embeddings, or a given matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Rows = Callable[[int, int], torch.Tensor]  # rows start..stop of S, (stop - start, N)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


def components(rows: Rows, n: int, threshold: float, inclusive: bool = True, chunk: int = 4096) -> np.ndarray:
    """The connected component of every node (n,): the smallest node index in it."""
    parent = np.arange(n)
    for start in range(0, n, chunk):
        block = rows(start, min(start + chunk, n))
        edges = block >= threshold if inclusive else block > threshold
        for i, j in torch.nonzero(edges).tolist():
            a, b = _find(parent, start + i), _find(parent, j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([_find(parent, i) for i in range(n)])


def centroids(rows: Rows, labels: np.ndarray, chunk: int = 4096) -> list[int]:
    """The centroid of every component, in the order of the components' smallest members."""
    n = len(labels)
    same = torch.as_tensor(labels)
    score = np.zeros(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = rows(start, stop).double()
        mask = same[start:stop, None] == same[None, :]
        mask[torch.arange(stop - start), torch.arange(start, stop)] = False  # j != i
        score[start:stop] = (block * mask).sum(1).numpy()
    best: dict[int, int] = {}
    for i in range(n):
        c = int(labels[i])
        if c not in best or score[i] > score[best[c]]:
            best[c] = i
    return [best[c] for c in sorted(best)]


def deduplicate(rows: Rows, n: int, threshold: float = 0.85, inclusive: bool = True, chunk: int = 4096):
    """``(kept, labels)``: the centroid of each component (sorted) and every node's component."""
    labels = components(rows, n, threshold, inclusive, chunk)
    return sorted(centroids(rows, labels, chunk)), labels


def matrix_rows(similarity: torch.Tensor) -> Rows:
    """The rows of a given similarity matrix."""
    return lambda start, stop: similarity[start:stop]


def cosine_rows(embeddings: torch.Tensor) -> Rows:
    """Rows of the cosine-similarity matrix of ``embeddings``, computed block by block (float64)."""
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    return lambda start, stop: unit[start:stop] @ unit.T


def deduplicate_embeddings(
    embeddings: torch.Tensor, groups: list[str], threshold: float = 0.85, inclusive: bool = True
) -> list[int]:
    """Indices kept after deduplicating within each group (a discipline), sorted."""
    kept = []
    for group in sorted(set(groups)):
        members = [i for i, g in enumerate(groups) if g == group]
        local, _ = deduplicate(cosine_rows(embeddings[members]), len(members), threshold, inclusive)
        kept += [members[i] for i in local]
    return sorted(kept)
