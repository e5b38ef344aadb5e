"""QAgent's rewards (arXiv:2510.08383 Eq. 7-10; notes §5.2) and the QA metrics they rest on.

Answers are compared after SQuAD's normalisation (lower case, punctuation and the articles a/an/the removed,
whitespace collapsed); ``golds`` is one gold answer or a list of acceptable ones (NQ-style), the best match counts.

- ``exact_match`` (strict): the normalised prediction equals a normalised gold;
- ``cover_match`` (non-strict EM): a normalised gold occurs in the normalised prediction as whole words (the
  authors' code tests a substring, which counts the gold "red" in "discovered");
- ``token_f1``: SQuAD's token F1;
- ``hit``: a normalised gold occurs as whole words in a retrieved passage (its title or text): the one definition
  of Hit in training and validation. The passages are those the environment returned (its ``<information>``
  blocks, deduplicated), never text the policy wrote: the authors' code looks for the gold anywhere in the
  trajectory, which pays a policy for writing the answer (or an ``<information>`` block of its own) instead of
  retrieving it.

Stage 1 (end to end): ``1[format ok] · EM_strict(last answer)``. Stage 2 (the agent as a retrieval module for a
frozen reader): ``EM_cover(reader(question, passages)) + 0.5 · hit(passages)``, the retrieved passages as above;
format and answer are not required.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from zoo.search.corpus import Passage
from zoo.search.tags import format_ok, last_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    guess = normalize_answer(prediction)
    return float(any(guess == normalize_answer(g) for g in _golds(golds)))


def cover_match(prediction: str, golds: str | Sequence[str]) -> float:
    guess = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in guess for g in _golds(golds) if normalize_answer(g)))


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    guess = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(golds):
        truth = normalize_answer(gold).split()
        common = sum((Counter(guess) & Counter(truth)).values())
        if common:
            precision, recall = common / len(guess), common / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def hit(passages: Sequence[Passage], golds: str | Sequence[str]) -> float:
    """1 when a gold answer is in one of ``passages`` (the retrieved ones)."""
    return float(any(cover_match(f"{p.title}. {p.text}", golds) for p in passages))


def stage1_reward(trajectory: str, golds: str | Sequence[str]) -> float:
    """Eq. 7: the format indicator times strict EM of the last answer."""
    answer = last_answer(trajectory)
    return float(answer is not None and format_ok(trajectory)) * exact_match(answer or "", golds)


def stage2_reward(reader_answer: str, passages: Sequence[Passage], golds: str | Sequence[str]) -> float:
    """Eq. 10: non-strict EM of the frozen reader's answer from the retrieved ``passages``, plus half a point when
    a gold answer is in one of them."""
    return cover_match(reader_answer, golds) + 0.5 * hit(passages, golds)
