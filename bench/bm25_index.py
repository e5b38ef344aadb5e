"""BM25 index size and speed for QAgent's retriever (zoo/search/retriever.py, bm25s) on generated corpora: what a
corpus of millions of passages takes on one machine, and query throughput beside rank_bm25 (the other BM25
package on PyPI; pure Python) on the same corpus.

Each size runs in a fresh process: a JSONL corpus of ``N`` passages is written (``--words`` words a passage, drawn
from a Zipf(1.1) vocabulary of 200,000 words, as Wikipedia passages' words are; DPR's passages hold 100 words),
then read as a user's corpus would be (``load_passages``), indexed (tokenize + index + save to the cache), reloaded
from the cache (memory-mapped), and searched with ``--queries`` 5-word queries at top 5. Prints seconds and the
process's peak resident memory after each stage (ru_maxrss), the index's size on disk, and per million passages.

    python bench/bm25_index.py --sizes 100000 1000000
    python bench/bm25_index.py --sizes 20000 --peer        # + rank_bm25's query time on the same corpus
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_size(size: int, words: int, queries: int, peer: bool, root: Path) -> dict:
    from zoo.search.corpus import load_passages
    from zoo.search.retriever import BM25Retriever

    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{k}" for k in range(200_000)])
    ranks = np.minimum(rng.zipf(1.1, size=(size, words)) - 1, len(vocabulary) - 1)
    corpus = root / "corpus.jsonl"
    start = time.perf_counter()
    with corpus.open("w") as f:
        for k in range(size):
            f.write(json.dumps({"id": str(k), "title": f"t{k}", "text": " ".join(vocabulary[ranks[k]])}) + "\n")
    out = {"passages": size, "write_s": time.perf_counter() - start}
    start = time.perf_counter()
    passages = load_passages(corpus)
    out |= {"load_s": time.perf_counter() - start, "load_peak_gib": peak_gib()}
    start = time.perf_counter()
    retriever = BM25Retriever(passages, cache=root / "cache")
    out |= {"index_s": time.perf_counter() - start, "index_peak_gib": peak_gib()}
    out["disk_mib"] = sum(f.stat().st_size for f in retriever.index_dir.iterdir()) / 2**20
    start = time.perf_counter()
    retriever = BM25Retriever(passages, cache=root / "cache")
    out["reload_s"] = time.perf_counter() - start
    asked = [" ".join(vocabulary[r]) for r in np.minimum(rng.zipf(1.3, size=(queries, 5)) - 1, 1999)]
    start = time.perf_counter()
    retriever.search(asked, k=5)
    out["query_ms"] = (time.perf_counter() - start) / queries * 1000
    if peer:
        from rank_bm25 import BM25Okapi

        start = time.perf_counter()
        index = BM25Okapi([f"{p.title} {p.text}".lower().split() for p in passages], k1=0.9, b=0.4)
        out["peer_index_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for q in asked[:20]:
            index.get_top_n(q.split(), passages, n=5)
        out["peer_query_ms"] = (time.perf_counter() - start) / 20 * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's size
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as root:
            print(json.dumps(one_size(args.one, args.words, args.queries, args.peer, Path(root))))
        return
    print("passages   write s  load s  index s  reload s  query ms  peak GiB  disk MiB  index s/M  GiB/M" +
          ("  rank_bm25 query ms  ratio" if args.peer else ""))  # fmt: skip
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--words", str(args.words), "--queries",
                   str(args.queries), *(["--peer"] if args.peer else [])]  # fmt: skip
        r = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        million = size / 1e6
        line = (f"{size:>9,}  {r['write_s']:7.1f}  {r['load_s']:6.1f}  {r['index_s']:7.1f}  {r['reload_s']:8.2f}  "
                f"{r['query_ms']:8.2f}  {r['index_peak_gib']:8.2f}  {r['disk_mib']:8.1f}  {r['index_s'] / million:9.1f}"
                f"  {r['index_peak_gib'] / million:5.2f}")  # fmt: skip
        if args.peer:
            line += f"  {r['peer_query_ms']:18.1f}  {r['peer_query_ms'] / r['query_ms']:5.0f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
