"""QAgent's tag language (arXiv:2510.08383 §3, Table 5; notes §5.1-5.2): what the agent writes and what the
environment answers.

The agent loops ``<plan>…</plan> <search><query>q1</query>…</search>``, the environment answers
``<information>…</information>`` with the retrieved passages, the agent writes ``<reflection>…</reflection>``,
then plans again or ends with ``<answer>…</answer>``. A turn ends at ``</search>`` or ``</answer>`` (the stop
strings of every engine) or at EOS.

- :func:`parse_action`: one turn → an answer (its last ``<answer>``), a search (the ``<query>`` items of its last
  ``<search>`` block; without query tags its lines, as the authors' code falls back to), or invalid;
- :func:`format_ok`: the stage-1 format check of a whole trajectory (the authors' ``reward_format``): every
  ``<search>`` immediately preceded by a ``<plan>…</plan>``, every ``<information>`` block immediately followed by
  a ``<reflection>…</reflection>``, and an ``<answer>``; whitespace between tags is allowed;
- :func:`retrieved_passages`: the passages of every ``<information>`` block of a trajectory, deduplicated in order
  (the paper's parseDocSet, Eq. 8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zoo.search.corpus import Passage

STOP_STRINGS = ("</search>", "</answer>")
RETRY = (
    "\nMy previous action is invalid. I should plan, then search with <search><query>…</query></search> or answer "
    "with <answer>…</answer>.\n"
)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_QUERY = re.compile(r"<query>(.*?)</query>", re.DOTALL)
_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_DOC = re.compile(r"Doc \d+\(Title: (.*?)\) (.*?)(?=\nDoc \d+\(Title: |\Z)", re.DOTALL)
_PLANNED_SEARCH = re.compile(r"<plan>(?:(?!</?plan>).)*</plan>\s*$", re.DOTALL)
_REFLECTION_NEXT = re.compile(r"^\s*<reflection>.*?</reflection>", re.DOTALL)


@dataclass(frozen=True)
class Action:
    kind: str  # answer | search | invalid
    queries: tuple[str, ...] = ()
    answer: str = ""


def parse_action(turn: str, max_queries: int = 3) -> Action:
    """What one turn of the agent asks for: an answer wins over a search in the same turn (the turn stops at the
    first of ``</search>`` and ``</answer>``, so both appear only in a turn that ignored the stop); at most
    ``max_queries`` queries, the first ones, empty ones dropped."""
    if answers := _ANSWER.findall(turn):
        return Action("answer", answer=answers[-1].strip())
    if searches := _SEARCH.findall(turn):
        block = searches[-1]
        items = _QUERY.findall(block) if "<query>" in block else block.split("\n")
        queries = tuple(q.strip() for q in items if q.strip())[:max_queries]
        if queries:
            return Action("search", queries=queries)
    return Action("invalid")


def information_block(passages: list[Passage]) -> str:
    """The environment's answer to a search: the passages, one a line, ranked, inside ``<information>``."""
    docs = "\n".join(p.render(rank) for rank, p in enumerate(passages, start=1))
    return f"\n<information>{docs}</information>\n"


def last_answer(trajectory: str) -> str | None:
    """The trajectory's last ``<answer>``, stripped; None without one."""
    answers = _ANSWER.findall(trajectory)
    return answers[-1].strip() if answers else None


def format_ok(trajectory: str) -> bool:
    """The stage-1 format check (see the module's docstring)."""
    if not _ANSWER.search(trajectory):
        return False
    for match in re.finditer(r"<search>", trajectory):
        if not _PLANNED_SEARCH.search(trajectory[: match.start()]):
            return False
    return all(_REFLECTION_NEXT.match(trajectory[m.end() :]) for m in _INFORMATION.finditer(trajectory))


def retrieved_passages(trajectory: str) -> list[Passage]:
    """Every passage of the trajectory's ``<information>`` blocks, first occurrence kept (by title and text)."""
    seen, passages = set(), []
    for block in _INFORMATION.findall(trajectory):
        for title, text in _DOC.findall(block.strip()):
            key = (title.strip(), text.strip())
            if key not in seen:
                seen.add(key)
                passages.append(Passage(f"retrieved:{len(passages)}", *key))
    return passages
