"""Design-logic deduplication (graph at τ, components, centroids) and coarse top-k retrieval."""

import random

import numpy as np
import pytest
import torch

from zoo.synth.dedup import components, cosine_rows, deduplicate, deduplicate_embeddings, matrix_rows
from zoo.synth.retrieval import top_k


def _matrix(n: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    s = torch.eye(n, dtype=torch.float64)
    for (i, j), value in entries.items():
        s[i, j] = s[j, i] = value
    return s


def test_hand_built_graph_components_and_centroids():
    # 0-1-2 a chain (1 is the most similar to the others), 3-4 a pair, 5 alone
    s = _matrix(6, {(0, 1): 0.9, (1, 2): 0.95, (0, 2): 0.5, (3, 4): 0.99, (2, 3): 0.2})
    kept, labels = deduplicate(matrix_rows(s), 6, threshold=0.85)
    assert labels.tolist() == [0, 0, 0, 3, 3, 5]
    assert kept == [1, 3, 5]  # 1: 0.9 + 0.95 beats 0: 0.9 + 0.5 and 2: 0.95 + 0.5; 3 and 4 tie, the lower wins


@pytest.mark.parametrize("inclusive, expected", [(True, [0, 0, 2]), (False, [0, 1, 2])])
def test_a_pair_at_exactly_tau_is_an_edge_only_when_inclusive(inclusive, expected):
    s = _matrix(3, {(0, 1): 0.85, (1, 2): 0.84999999})
    assert components(matrix_rows(s), 3, 0.85, inclusive).tolist() == expected


def _brute_force_components(s: np.ndarray, threshold: float) -> list[int]:
    n, labels = len(s), [-1] * len(s)
    for start in range(n):
        if labels[start] >= 0:
            continue
        stack, labels[start] = [start], start
        while stack:
            i = stack.pop()
            for j in range(n):
                if labels[j] < 0 and s[i, j] >= threshold:
                    labels[j] = start
                    stack.append(j)
    return labels


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_embedding_graph_matches_brute_force_at_any_chunk(chunk):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 8, generator=g)
    x = torch.cat([c + 0.25 * torch.randn(10, 8, generator=g) for c in centres])
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    expected = _brute_force_components((unit @ unit.T).numpy(), 0.85)
    kept, labels = deduplicate(cosine_rows(x), len(x), 0.85, chunk=chunk)
    assert labels.tolist() == expected
    s = (unit @ unit.T).numpy()
    for c in set(expected):
        members = [i for i in range(len(x)) if expected[i] == c]
        sums = [s[i, members].sum() - s[i, i] for i in members]
        assert members[int(np.argmax(sums))] in kept
    assert len(kept) == len(set(expected))


def test_dedup_stays_within_a_discipline():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.0]])
    assert deduplicate_embeddings(x, ["math", "math", "physics"]) == [0, 2]


def test_top_k_is_invariant_to_batch_order_and_chunking():
    g = torch.Generator().manual_seed(1)
    segments, logics = torch.randn(40, 16, generator=g), torch.randn(30, 16, generator=g)
    logics[7] = logics[3]  # an exact tie: the lower index ranks first
    segments[5] = logics[3]
    reference = top_k(segments, logics, k=5)
    assert reference[5][0][0] == 3 and reference[5][1][0] == 7
    order = list(range(40))
    random.Random(0).shuffle(order)
    shuffled = top_k(segments[order], logics, k=5, chunk=3)
    for position, i in enumerate(order):
        assert [j for j, _ in shuffled[position]] == [j for j, _ in reference[i]]
    unit_s = torch.nn.functional.normalize(segments.double(), dim=1)
    unit_l = torch.nn.functional.normalize(logics.double(), dim=1)
    for i, ranks in enumerate(reference):  # the best five by cosine, best first
        scores = (unit_s[i] @ unit_l.T).tolist()
        assert [round(v, 9) for _, v in ranks] == [round(v, 9) for v in sorted(scores, reverse=True)[:5]]


def test_top_k_within_discipline():
    segments = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logics = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ranked = top_k(segments, logics, k=5, segment_groups=["a", "b", "c"], logic_groups=["a", "b", "b"])
    assert [j for j, _ in ranked[0]] == [0]  # only discipline a's logic
    assert [j for j, _ in ranked[1]] == [2, 1]
    assert len(ranked[2]) == 3  # a discipline without logics sees them all
