"""DESIGNER's filters on real questions (zoo/synth/near_duplicates.py, zoo/synth/decontamination.py): MinHash
near-duplicate removal checked against exact Jaccard in the same process (every pair, as a sparse product of the
shingle matrix; the same keep-the-first rule), and 13-gram decontamination of a question set against benchmark
files: counts and times.

    python bench/synth_filters.py                       # GSM8K train against GSM8K test, AIME24, AMC23, Minerva
    python bench/synth_filters.py --texts my.jsonl --benchmarks a.jsonl b.jsonl --threshold 0.8
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.synth.decontamination import BenchmarkIndex  # noqa: E402
from zoo.synth.near_duplicates import near_duplicates  # noqa: E402
from zoo.synth.sources import read_texts  # noqa: E402
from zoo.synth.text import ngrams, words  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def exact_near_duplicates(texts: list[str], threshold: float, ngram: int) -> dict[int, int]:
    """What :func:`near_duplicates` approximates: exact Jaccard of the shingle sets, the first of a group kept."""
    vocabulary: dict[tuple, int] = {}
    rows, cols = [], []
    for i, text in enumerate(texts):
        for gram in ngrams(words(text), ngram):
            rows.append(i)
            cols.append(vocabulary.setdefault(gram, len(vocabulary)))
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocabulary)))
    x.data[:] = 1  # a set, not a bag
    sizes = np.asarray(x.sum(1)).ravel()
    shared = (x @ x.T).tocoo()
    similar: dict[int, list[int]] = {}
    for i, j, inter in zip(shared.row, shared.col, shared.data, strict=True):
        if j < i and inter / (sizes[i] + sizes[j] - inter) >= threshold:
            similar.setdefault(int(i), []).append(int(j))
    dropped: dict[int, int] = {}
    for i in sorted(similar):
        kept = [j for j in similar[i] if j not in dropped]
        if kept:
            dropped[i] = min(kept)
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default=str(DATA / "gsm8k" / "train.jsonl"))
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=[
            str(DATA / f)
            for f in ("gsm8k/test.jsonl", "aime24/test.jsonl", "amc23/test.jsonl", "minerva_math/test.jsonl")
        ],
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--ngram", type=int, default=3)
    args = parser.parse_args()
    texts = read_texts(args.texts)
    print(f"{len(texts):,} texts from {args.texts}")

    start = time.perf_counter()
    approximate = near_duplicates(texts, args.threshold, args.ngram)
    minhash_s = time.perf_counter() - start
    start = time.perf_counter()
    exact = exact_near_duplicates(texts, args.threshold, args.ngram)
    exact_s = time.perf_counter() - start
    found = set(approximate) & set(exact)
    print(
        f"near duplicates (Jaccard >= {args.threshold} on word {args.ngram}-grams): MinHash LSH drops "
        f"{len(approximate)} in {minhash_s:.2f} s; exact Jaccard over every pair drops {len(exact)} "
        f"in {exact_s:.2f} s; "
        f"recall {len(found) / max(len(exact), 1):.3f}, precision {len(found) / max(len(approximate), 1):.3f}"
    )
    for i, j in list(approximate.items())[:3]:
        print(f"  e.g. {texts[i][:90]!r}\n    ~ {texts[j][:90]!r}")

    start = time.perf_counter()
    index = BenchmarkIndex(13)
    indexed = sum(index.add_file(path) for path in args.benchmarks)
    matches = [index.match([text]) for text in texts]
    decontam_s = time.perf_counter() - start
    by_file = Counter(m.rsplit(":", 1)[0] for m in matches if m)
    print(
        f"13-gram decontamination against {indexed:,} benchmark texts ({len(index.grams):,} grams): "
        f"{sum(by_file.values())} of {len(texts):,} texts share a 13-gram ({dict(by_file)}), {decontam_s:.2f} s"
    )
    for i, m in [(i, m) for i, m in enumerate(matches) if m][:3]:
        print(f"  e.g. {texts[i][:100]!r} ~ {m}")


if __name__ == "__main__":
    main()
