"""Question selection: quotas by bank share, equal per cluster, 3:2:1 by difficulty with backfill, K by
silhouette."""

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zoo.synth.selection import by_difficulty, choose_k, equal_shares, proportional, select


def test_proportional_shares_follow_the_sizes_and_sum_to_the_total():
    assert proportional(10, [50, 30, 20]) == [5, 3, 2]
    assert proportional(7, [1, 1, 1]) == [3, 2, 2]  # the remainder to the earlier
    assert proportional(12, [3, 2, 1]) == [6, 4, 2]


@given(st.integers(0, 200), st.lists(st.integers(0, 60), min_size=1, max_size=8))
def test_equal_shares_water_fill(total, sizes):
    shares = equal_shares(total, sizes)
    assert sum(shares) == min(total, sum(sizes))
    assert all(0 <= s <= size for s, size in zip(shares, sizes, strict=True))
    unfilled = [s for s, size in zip(shares, sizes, strict=True) if s < size]
    if unfilled:  # a group that could take more got at least as much as any other group got
        assert min(unfilled) >= max(shares) - 1


def test_difficulty_ratio_is_three_two_one():
    difficulty = ["Very Hard"] * 50 + ["Hard"] * 50 + ["Medium"] * 50 + ["Easy"] * 50
    chosen = by_difficulty(list(range(200)), difficulty, 60, random.Random(0))
    assert Counter(difficulty[i] for i in chosen) == {"Very Hard": 30, "Hard": 20, "Medium": 10}


def test_too_few_hard_questions_are_backfilled_with_easier_ones():
    difficulty = ["Very Hard"] * 5 + ["Hard"] * 4 + ["Medium"] * 50 + ["Easy"] * 50
    chosen = by_difficulty(list(range(109)), difficulty, 30, random.Random(0))
    counts = Counter(difficulty[i] for i in chosen)
    assert counts == {"Very Hard": 5, "Hard": 4, "Medium": 21}  # 15 + 10 + 5 wanted; 16 missing come from Medium
    only_easy = by_difficulty(list(range(4)), ["Easy"] * 3 + ["Very Hard"], 4, random.Random(0))
    assert sorted(only_easy) == [0, 1, 2, 3]


def _blobs(centres: int, per: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, 16)) * 10
    return np.concatenate([m + rng.normal(size=(per, 16)) for m in means])


def test_silhouette_finds_the_planted_number_of_clusters():
    assert choose_k(_blobs(4, 30), [2, 3, 4, 5, 6, 8], seed=0, silhouette_sample=1000) == 4
    assert choose_k(_blobs(4, 30)[:1], [2, 3], seed=0, silhouette_sample=1000) == 1  # nothing to split


def test_selection_takes_equally_from_every_cluster_within_discipline_quotas():
    embeddings = np.concatenate([_blobs(3, 40, seed=1), _blobs(2, 30, seed=2)])
    disciplines = ["math"] * 120 + ["physics"] * 60
    difficulties = [random.Random(i).choice(["Very Hard", "Hard", "Medium", "Easy"]) for i in range(180)]
    chosen, cluster_of, clusters = select(embeddings, disciplines, difficulties, 30, [2, 3, 4, 5], seed=0)
    assert clusters == {"math": 3, "physics": 2}
    assert Counter(disciplines[i] for i in chosen) == {"math": 20, "physics": 10}  # 2:1 like the bank
    per_cluster = Counter(cluster_of[i] for i in chosen)
    assert sorted(per_cluster.values()) == [5, 5, 6, 7, 7]  # 20 over 3 clusters, 10 over 2
    assert chosen == sorted(set(chosen))
    again = select(embeddings, disciplines, difficulties, 30, [2, 3, 4, 5], seed=0)
    assert again[0] == chosen


@pytest.mark.parametrize("total", [0, 1000])
def test_selection_bounds(total):
    embeddings = _blobs(2, 10)
    chosen, _, _ = select(embeddings, ["a"] * 20, ["Hard"] * 20, total, [2, 3], seed=0)
    assert len(chosen) == min(total, 20)
