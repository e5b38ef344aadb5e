"""Text normalisation shared by the filters: lower case, punctuation and LaTeX markup to spaces, words."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def words(text: str) -> list[str]:
    """The lower-cased word tokens of ``text`` (``_`` and punctuation separate words)."""
    return _NON_WORD.sub(" ", text.lower().replace("_", " ")).split()


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The word n-grams of ``tokens``; a text shorter than ``n`` is one gram, itself (so it is never invisible)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
