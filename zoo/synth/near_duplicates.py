"""MinHash near-duplicate removal (DESIGNER's phase 3, notes §3.3), with datasketch (maintained, and its LSH
index finds candidate pairs without comparing all of them).

A text's set is its word ``ngram``-shingles after :func:`zoo.synth.text.words` normalisation; two texts are near
duplicates when the MinHash estimate of their Jaccard similarity is at least ``threshold`` (LSH proposes the
candidates, the estimate decides). Texts are taken in order and one is dropped when it is a near duplicate of a
text already kept, so the first of every group stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from zoo.synth import require
from zoo.synth.text import ngrams, words


def signatures(texts: Sequence[str], ngram: int = 3, num_perm: int = 128, seed: int = 1):
    MinHash = require("datasketch", "MinHash deduplication").MinHash
    shingles = [[" ".join(g).encode() for g in sorted(ngrams(words(t), ngram))] for t in texts]
    return MinHash.bulk(shingles, num_perm=num_perm, seed=seed)


def near_duplicates(
    texts: Sequence[str], threshold: float = 0.7, ngram: int = 3, num_perm: int = 128, seed: int = 1
) -> dict[int, int]:
    """``{dropped index: the kept index it duplicates}`` over ``texts`` in order."""
    MinHashLSH = require("datasketch", "MinHash deduplication").MinHashLSH
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = signatures(texts, ngram, num_perm, seed)
    dropped: dict[int, int] = {}
    for i, signature in enumerate(hashes):
        similar = [int(j) for j in index.query(signature) if signature.jaccard(hashes[int(j)]) >= threshold]
        if similar:
            dropped[i] = min(similar)
        else:
            index.insert(str(i), signature)
    return dropped
