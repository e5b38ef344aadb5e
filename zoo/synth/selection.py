"""Which bank questions DESIGNER extracts design logics from (notes §3.3, phase 1): per discipline, K-means on
the question embeddings with K chosen by the silhouette score, an equal share of the discipline's quota from each
cluster, and within a cluster the difficulty ratio Very Hard : Hard : Medium = 3 : 2 : 1, backfilled with easier
questions when the harder ones run out. Disciplines get quotas in proportion to their share of the bank.

K-means and the silhouette come from scikit-learn (maintained, exact, and the per-discipline banks are small
enough for a CPU; ``silhouette_sample`` caps the silhouette's O(n²) cost). Every draw is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from zoo.synth import require

DIFFICULTIES = ("Very Hard", "Hard", "Medium", "Easy")  # hardest first: the backfill order
RATIO = {"Very Hard": 3, "Hard": 2, "Medium": 1, "Easy": 0}


def proportional(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the earlier). With ``total`` at
    most ``sum(weights)`` no share exceeds its weight."""
    if total == 0 or sum(weights) == 0:
        return [0] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def equal_shares(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` split as equally as the ``sizes`` allow (water-filling: a small group gives all it has and the
    rest is shared among the others; leftover units go to the earlier groups)."""
    shares = [0] * len(sizes)
    remaining, open_groups = min(total, sum(sizes)), sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    while open_groups and remaining:
        each = remaining // len(open_groups)
        smallest = open_groups[0]
        if sizes[smallest] - shares[smallest] <= each:  # the smallest group is used up
            remaining -= sizes[smallest] - shares[smallest]
            shares[smallest] = sizes[smallest]
            open_groups.pop(0)
            continue
        for i in open_groups:
            shares[i] += each
        remaining -= each * len(open_groups)
        for i in sorted(open_groups)[:remaining]:
            shares[i] += 1
        remaining = 0
    return shares


def by_difficulty(items: Sequence[int], difficulty: Sequence[str], quota: int, rng: random.Random) -> list[int]:
    """``quota`` of ``items`` at 3:2:1 Very Hard : Hard : Medium; a level short of its share is backfilled from the
    next easier level (then Easy, then unlabelled, and only then the harder leftovers)."""
    pools = {level: [i for i in items if difficulty[i] == level] for level in DIFFICULTIES}
    pools["other"] = [i for i in items if difficulty[i] not in RATIO]
    for pool in pools.values():
        rng.shuffle(pool)
    wanted = proportional(quota, [RATIO[level] for level in DIFFICULTIES[:3]])
    chosen: list[int] = []
    carried = 0
    for level, want in zip(DIFFICULTIES[:3], wanted, strict=True):
        take = min(want + carried, len(pools[level]))
        chosen += pools[level][:take]
        pools[level] = pools[level][take:]
        carried = want + carried - take
    for level in ("Easy", "other", "Medium", "Hard", "Very Hard"):  # still short: easier ones first, then harder
        if len(chosen) >= quota:
            break
        chosen += pools[level][: quota - len(chosen)]
    return chosen


def choose_k(embeddings: np.ndarray, candidates: Sequence[int], seed: int, silhouette_sample: int) -> int:
    """The K among ``candidates`` (those with 2 <= K < n) with the best silhouette score; 1 when none fits."""
    KMeans = require("sklearn.cluster", "K-means selection").KMeans
    silhouette_score = require("sklearn.metrics", "the silhouette").silhouette_score
    n = len(embeddings)
    best, best_score = 1, -np.inf
    for k in candidates:
        if not 2 <= k < n:
            continue
        labels = KMeans(k, n_init=4, random_state=seed).fit_predict(embeddings)
        if len(set(labels)) < 2:
            continue
        sample = min(silhouette_sample, n)
        score = silhouette_score(embeddings, labels, sample_size=sample, random_state=seed)
        if score > best_score:
            best, best_score = k, score
    return best


def cluster(embeddings: np.ndarray, candidates: Sequence[int], seed: int, silhouette_sample: int = 2000):
    """Cluster labels (n,) with K chosen by :func:`choose_k`."""
    KMeans = require("sklearn.cluster", "K-means selection").KMeans
    k = choose_k(embeddings, candidates, seed, silhouette_sample)
    if k == 1:
        return np.zeros(len(embeddings), dtype=int)
    return KMeans(k, n_init=4, random_state=seed).fit_predict(embeddings)


def select(
    embeddings: np.ndarray,
    disciplines: Sequence[str],
    difficulties: Sequence[str],
    total: int,
    candidates: Sequence[int],
    seed: int,
    silhouette_sample: int = 2000,
) -> tuple[list[int], dict[int, int], dict[str, int]]:
    """The indices of the ``total`` chosen questions (sorted), each chosen question's cluster (numbered across
    disciplines), and the number of clusters of each discipline."""
    rng = random.Random(seed)
    names = sorted(set(disciplines))
    members = {name: [i for i, d in enumerate(disciplines) if d == name] for name in names}
    quotas = proportional(min(total, len(disciplines)), [len(members[name]) for name in names])
    chosen: list[int] = []
    cluster_of: dict[int, int] = {}
    counts: dict[str, int] = {}
    offset = 0
    for name, quota in zip(names, quotas, strict=True):
        rows = members[name]
        labels = cluster(embeddings[rows], candidates, seed, silhouette_sample)
        clusters = [[rows[i] for i in np.flatnonzero(labels == c)] for c in range(labels.max() + 1)]
        for c, share in enumerate(equal_shares(quota, [len(c) for c in clusters])):
            picked = by_difficulty(clusters[c], difficulties, share, rng)
            chosen += picked
            cluster_of.update({i: offset + c for i in picked})
        offset += len(clusters)
        counts[name] = len(clusters)
    return sorted(chosen), cluster_of, counts
