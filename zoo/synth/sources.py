"""DESIGNER's inputs: the question bank the design logics come from, and the source texts new questions are
written from (notes §3.3).

- Question bank: JSONL files, one question a row, its text in ``question`` or ``problem`` (GSM8K, MATH, AIME,
  AMC, Minerva all read as they are) and optionally its answer in ``answer`` or ``solution`` (GSM8K's worked
  answer, MATH's solution); or ``embedded``: the questions of zoo's embedded search world (no files needed).
- Source texts: JSONL rows with ``text`` (optional ``id``, ``discipline``), ``.txt`` files, folders of both, or
  ``embedded``: zoo's embedded corpus (the Python reference and standard-library docstrings) and the search
  world's passages. A text is cut into segments at paragraph breaks, each at most ``max_words`` words (the
  paper splits chapters over 5,000 words); segments under ``min_words`` are dropped.

A malformed row stops with its file and line; every item has a stable, unique id (``<file as given>:<line>``,
``<file as given>:<row id or line>#<segment>``) so that a resumed stage finds its place; a repeated id is an
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.errors import DataError
from zoo.io.files import read_utf8
from zoo.io.jsonl import read_jsonl

EMBEDDED = "embedded"


@dataclass(frozen=True)
class BankQuestion:
    id: str
    text: str
    answer: str | None


@dataclass(frozen=True)
class Segment:
    id: str
    text: str
    discipline: str | None  # given by the source row; else assigned by the pipeline


def _text_field(path: Path, number: int, row: dict, names: tuple[str, ...], required: bool) -> str | None:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    if required:
        raise DataError(f"{path}:{number}: no field {' or '.join(repr(n) for n in names)} in this row")
    return None


def load_bank(files: list[str]) -> list[BankQuestion]:
    questions: list[BankQuestion] = []
    for spec in files:
        if spec == EMBEDDED:
            from zoo.search.world import default_world

            questions += [BankQuestion(f"world:{i}", q.text, q.answer) for i, q in enumerate(default_world().questions)]
            continue
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"bank file not found: {path}")
        for number, row in read_jsonl(path):
            text = _text_field(path, number, row, ("question", "problem"), True)
            answer = _text_field(path, number, row, ("answer", "solution"), False)
            questions.append(BankQuestion(f"{spec}:{number}", text, answer))
    if not questions:
        raise DataError("bank.files: no questions")
    _unique([q.id for q in questions], "bank.files")
    return questions


def _unique(ids: list[str], key: str) -> None:
    """Stages find their place by id: two items with one id is an error naming it."""
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise DataError(f"{key}: the id {item!r} occurs twice (a file given twice, or a repeated row id)")
        seen.add(item)


def segments_of(text: str, max_words: int) -> list[str]:
    """``text`` cut at paragraph breaks into pieces of at most ``max_words`` words (a longer paragraph is cut by
    words)."""
    pieces: list[str] = []
    current: list[str] = []
    for paragraph in (p.split() for p in text.split("\n\n")):
        if current and len(current) + len(paragraph) > max_words:
            pieces.append(" ".join(current))
            current = []
        while len(paragraph) > max_words:
            pieces.append(" ".join(paragraph[:max_words]))
            paragraph = paragraph[max_words:]
        current += paragraph
    if current:
        pieces.append(" ".join(current))
    return pieces


def _documents(spec: str) -> list[tuple[str, str, str | None]]:
    """``(id, text, discipline)`` of every document of one source spec."""
    if spec == EMBEDDED:
        from zoo.search.world import default_world
        from zoo.text.corpus import embedded_corpus

        docs = [(d.name, d.text, None) for d in embedded_corpus()]
        return docs + [(f"world:{p.id}", f"{p.title}. {p.text}", None) for p in default_world().passages]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".txt"))
        return [doc for f in files for doc in _documents(str(f))]
    if not path.is_file():
        raise DataError(f"source file not found: {path}")
    if path.suffix == ".txt":
        return [(spec, read_utf8(path), None)]
    docs = []
    for number, row in read_jsonl(path):
        text = _text_field(path, number, row, ("text", "contents"), True)
        discipline = row.get("discipline") if isinstance(row.get("discipline"), str) else None
        docs.append((f"{spec}:{row.get('id', number)}", text, discipline))
    return docs


def load_segments(files: list[str], max_words: int, min_words: int) -> list[Segment]:
    segments = []
    for spec in files:
        for doc_id, text, discipline in _documents(spec):
            for k, piece in enumerate(segments_of(text, max_words)):
                if len(piece.split()) >= min_words:
                    segments.append(Segment(f"{doc_id}#{k}", piece, discipline))
    if not segments:
        raise DataError(f"sources.files: no segment of at least {min_words} words")
    _unique([s.id for s in segments], "sources.files")
    return segments


def read_texts(source: str, field: str | None = None, limit: int | None = None, seed: int = 0) -> list[str]:
    """The texts of a question set, for its diversity metrics: a JSONL file (``field``, or the first of
    ``question``, ``problem``, ``text``) or a synth work directory (its ``sft.jsonl`` problems); with ``limit``, a
    seeded sample."""
    import random

    path = Path(source).expanduser()
    if path.is_dir():
        path, field = path / "sft.jsonl", field or "problem"
    if not path.is_file():
        raise DataError(f"not found: {path}")
    names = (field,) if field else ("question", "problem", "text")
    texts = [_text_field(path, number, row, names, True) for number, row in read_jsonl(path)]
    if limit is not None and limit < len(texts):
        texts = random.Random(seed).sample(texts, limit)
    return texts
