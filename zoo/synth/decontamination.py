"""13-gram decontamination (DESIGNER's phase 3, notes §3.3): a synthesised item is dropped when it shares a word
13-gram with any benchmark text, after :func:`zoo.synth.text.words` normalisation (case, punctuation and LaTeX
markup do not hide an overlap). A benchmark text shorter than 13 words counts as one gram of its own length, so
a short benchmark question copied whole is caught too.

Benchmarks are JSONL files; every string in the named fields of every row is indexed (default: the question
fields ``problem`` and ``question``; add ``answer``/``solution`` to guard the references as well).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from zoo.errors import DataError
from zoo.io.jsonl import read_jsonl
from zoo.synth.text import ngrams, words

DEFAULT_FIELDS = ("problem", "question")


class BenchmarkIndex:
    """The n-grams of a set of benchmark texts, with where each came from."""

    def __init__(self, n: int = 13) -> None:
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.lengths: set[int] = {n}

    def add(self, text: str, origin: str) -> None:
        tokens = words(text)
        for gram in ngrams(tokens, self.n):
            self.grams.setdefault(gram, origin)
        if 0 < len(tokens) < self.n:
            self.lengths.add(len(tokens))

    def add_file(self, path: str | Path, fields: Sequence[str] = DEFAULT_FIELDS) -> int:
        """Index ``fields`` of every row of a JSONL file; the number of texts indexed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"benchmark file not found: {path}")
        count = 0
        for number, row in read_jsonl(path):
            for field in fields:
                if isinstance(row.get(field), str):
                    self.add(row[field], f"{path}:{number}")
                    count += 1
        if not count:
            raise DataError(f"{path}: no field {' or '.join(fields)} in any row")
        return count

    def match(self, texts: Iterable[str]) -> str | None:
        """Where the first benchmark gram found in ``texts`` came from, or None when they are clean."""
        for text in texts:
            tokens = words(text)
            for n in sorted(self.lengths, reverse=True):
                for gram in ngrams(tokens, n) if len(tokens) >= n else ():
                    if gram in self.grams:
                        return self.grams[gram]
        return None
