"""Passage corpora for retrieval: what a search agent's retriever searches (QAgent, arXiv:2510.08383 §5).

A corpus is a JSONL file, one passage a line, ``{"id", "title", "text"}`` (``id`` and ``title`` optional; the
DPR/Search-R1 dump's ``{"id", "contents"}``, whose first line is the title, is read too), or a folder: every
``*.jsonl`` in it as above, every ``*.txt`` split into passages at blank lines (title: the file's name), in name
order. A malformed row is an error naming its file and line. :func:`fingerprint` identifies a corpus by its
content, so that an index built once is found again (:mod:`zoo.search.retriever`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import DataError
from zoo.io.files import read_utf8
from zoo.io.jsonl import read_jsonl


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def render(self, rank: int) -> str:
        """How a passage reads inside an ``<information>`` block (Search-R1's layout)."""
        return f"Doc {rank}(Title: {self.title}) {self.text}"


def _jsonl_passages(path: Path) -> list[Passage]:
    passages = []
    for number, row in read_jsonl(path):
        if isinstance(row.get("text"), str):
            title, text = row.get("title", ""), row["text"]
        elif isinstance(row.get("contents"), str):
            title, _, text = row["contents"].partition("\n")
            title = title.strip().strip('"')
        else:
            raise DataError(f"{path}:{number}: a passage needs a 'text' (or 'contents') string")
        if not isinstance(title, str):
            raise DataError(f"{path}:{number}: 'title' must be a string, not {type(title).__name__}")
        passages.append(Passage(str(row.get("id", f"{path.stem}:{number}")), title, text.strip()))
    return passages


def _text_passages(path: Path) -> list[Passage]:
    paragraphs = [p.strip() for p in read_utf8(path).split("\n\n") if p.strip()]
    return [Passage(f"{path.stem}:{k}", path.stem, " ".join(p.split())) for k, p in enumerate(paragraphs)]


def load_passages(path: str | Path) -> list[Passage]:
    """The passages of a JSONL file or a folder of ``*.jsonl`` and ``*.txt`` files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in (".jsonl", ".txt") and not f.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no *.jsonl or *.txt passage files in this folder")
        passages = [p for f in files for p in (_jsonl_passages(f) if f.suffix == ".jsonl" else _text_passages(f))]
    elif path.is_file():
        passages = _jsonl_passages(path)
    else:
        raise DataError(f"corpus not found: {path}")
    if not passages:
        raise DataError(f"{path}: no passages")
    return passages


def fingerprint(passages: Iterable[Passage]) -> str:
    """A sha256 of the passages' ids, titles and texts, in order."""
    digest = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            digest.update(part.encode())
            digest.update(b"\x00")
    return digest.hexdigest()
