"""BM25 retrieval over a passage corpus, through bm25s (a maintained, numpy-only BM25: sparse score matrices
built once, queries scored by summing their tokens' columns).

The index is built once per corpus and cached under ``$ZOO_CACHE/bm25/<fingerprint>`` (the corpus's content hash
and the BM25 settings; :mod:`zoo.search.corpus`), written atomically, memory-mapped when read again. Tokens are
lower-cased words of two or more characters without English stop words (bm25s' defaults, no stemmer). A query
returns its ``k`` best passages with a positive score: one that shares no word with the corpus returns none.

:func:`retriever_for` keeps one retriever per corpus in the process, so that the environments of every
trajectory share it. The corpus ``world`` is zoo's embedded one (:mod:`zoo.search.world`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import bm25s
import numpy as np

from zoo.errors import DataError
from zoo.io.files import atomic_directory, cache_dir
from zoo.search.corpus import Passage, fingerprint, load_passages

log = logging.getLogger("zoo")
STOPWORDS = "en"


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


class BM25Retriever:
    def __init__(self, passages: list[Passage], k1: float = 0.9, b: float = 0.4, cache: Path | None = None) -> None:
        """``k1`` and ``b``: Pyserini's BM25 defaults (those of the DPR-Wikipedia BM25 baselines)."""
        if not passages:
            raise DataError("a retriever needs at least one passage")
        self.passages, self.k1, self.b = passages, k1, b
        settings = json.dumps({"k1": k1, "b": b, "stopwords": STOPWORDS, "bm25s": 1}).encode()
        self.key = hashlib.sha256(fingerprint(passages).encode() + settings).hexdigest()[:24]
        self.index_dir = (cache if cache is not None else cache_dir() / "bm25") / self.key
        self.build_seconds = 0.0  # 0 when the index came from the cache
        self.index = self._load() or self._build()

    def _load(self) -> bm25s.BM25 | None:
        if not (self.index_dir / "params.index.json").is_file():
            return None
        try:
            return bm25s.BM25.load(self.index_dir, mmap=True, show_progress=False)
        except Exception as error:  # a damaged cache entry is rebuilt, never trusted
            log.warning("BM25 index %s unreadable (%s): rebuilding it", self.index_dir, error)
            return None

    def _build(self) -> bm25s.BM25:
        start = time.perf_counter()
        index = bm25s.BM25(k1=self.k1, b=self.b)
        index.index(_tokens([f"{p.title} {p.text}" for p in self.passages]), show_progress=False)
        with atomic_directory(self.index_dir) as tmp:
            index.save(tmp, show_progress=False)
        self.build_seconds = time.perf_counter() - start
        return index

    def search(self, queries: list[str], k: int = 1) -> list[list[Passage]]:
        """The ``k`` best passages of each query (fewer when fewer score above 0), best first."""
        if not queries:
            return []
        k = min(k, len(self.passages))
        documents, scores = self.index.retrieve(_tokens(queries), k=k, show_progress=False, n_threads=1)
        return [
            [self.passages[int(d)] for d, s in zip(row, row_scores, strict=True) if s > 0]
            for row, row_scores in zip(np.asarray(documents), np.asarray(scores), strict=True)
        ]


_RETRIEVERS: dict[str, BM25Retriever] = {}
_LOCK = threading.Lock()


def retriever_for(corpus: str) -> BM25Retriever:
    """The process's retriever of ``corpus``: ``world`` (zoo's embedded corpus) or a JSONL file or folder."""
    with _LOCK:
        if corpus == "world":
            from zoo.search.world import default_world

            key = corpus
        else:
            path = Path(corpus).expanduser().resolve()
            if not path.exists():
                raise DataError(f"corpus not found: {corpus}")
            key = f"{path}:{path.stat().st_mtime_ns}"
        if key not in _RETRIEVERS:
            passages = default_world().passages if corpus == "world" else load_passages(corpus)
            _RETRIEVERS[key] = BM25Retriever(passages)
        return _RETRIEVERS[key]
