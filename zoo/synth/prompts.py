"""DESIGNER's prompts and the parsers of their answers. The paper's prompt texts were not published (notes §3.3);
these follow its description: annotation of discipline / difficulty / type, design-logic extraction in three
moves (the designer's thought process, the construction from knowledge points to question, the abstract
principles) as a Mermaid flowchart, fine ranking of the top-5 logics with generation of a graduate-level
question that strictly follows the chosen one plus a concise reference answer, and a long reasoning answer in
``<think>…</think>`` followed by the answer. A parser raises :class:`Malformed` with the reason; the stage asks
again (another seed) up to its ``retries``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from zoo.synth.mermaid import MalformedLogic, parse_flowchart
from zoo.synth.selection import DIFFICULTIES


class Malformed(ValueError):
    """An answer the stage cannot use (the message says why)."""


ANNOTATE = """Classify this exam question.

Question: {question}

Disciplines: {disciplines}
Difficulty levels: Easy, Medium, Hard, Very Hard
Question types: {types}

Reply with exactly three lines:
Discipline: <one of the disciplines>
Difficulty: <one of the levels>
Type: <one of the types>
"""

EXTRACT = """Here is an exam question{with_answer}. Reverse-engineer how the examiner designed it:
(i) infer the designer's thought process, (ii) trace how the knowledge points were turned into this question,
and (iii) abstract the design principles into general steps that would build a question of the same kind from
other material.

Question: {question}
{answer_block}
Write the design logic as a Mermaid flowchart (flowchart TD, one node per step, arrows between the steps),
inside ```mermaid and ```.
"""

GENERATE = """Source text:
{source}

Candidate design logics:
{logics}

Choose the design logic that suits the source text best. Then write one new graduate-level exam question based
on the source text that strictly follows the chosen logic's steps, and a concise reference answer.

Reply in exactly this form:
Logic: <the number of the chosen logic>
Question: <the question>
Answer: <the reference answer>
"""

ANSWER = """{question}

Think it through step by step inside <think> and </think>, then give the final answer after </think>."""


def _choice(text: str, field: str, options: Sequence[str]) -> str:
    match = re.search(rf"^\s*\**{field}\**\s*:\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    if not match:
        raise Malformed(f"no '{field}:' line")
    value = match.group(1).strip(" .*`\"'").lower()
    by_name = {o.lower(): o for o in options}
    if value in by_name:
        return by_name[value]
    raise Malformed(f"{field} {match.group(1)!r} is not one of {', '.join(options)}")


@dataclass(frozen=True)
class Annotation:
    discipline: str
    difficulty: str
    type: str


def parse_annotation(text: str, disciplines: Sequence[str], types: Sequence[str]) -> Annotation:
    return Annotation(
        _choice(text, "Discipline", disciplines),
        _choice(text, "Difficulty", DIFFICULTIES),
        _choice(text, "Type", types),
    )


def extract_prompt(question: str, answer: str | None) -> str:
    if answer:
        return EXTRACT.format(with_answer=" and its answer", question=question, answer_block=f"Answer: {answer}\n")
    return EXTRACT.format(with_answer="", question=question, answer_block="")


def parse_logic(text: str, min_steps: int) -> tuple[str, list[str]]:
    """The canonical Mermaid text of the answer's flowchart and its steps in order."""
    try:
        chart = parse_flowchart(text, min_steps)
        return chart.text(), chart.steps()
    except MalformedLogic as e:
        raise Malformed(str(e)) from None


def generate_prompt(source: str, logics: Sequence[str]) -> str:
    listed = "\n".join(f"[{i}]\n```mermaid\n{logic}\n```" for i, logic in enumerate(logics, start=1))
    return GENERATE.format(source=source, logics=listed)


@dataclass(frozen=True)
class Generated:
    choice: int  # 0-based index into the candidates
    question: str
    answer: str


_GENERATED = re.compile(
    r"Logic\W*:?\W*(\d+).*?^\s*\**Question\**\s*:\s*(.+?)^\s*\**Answer\**\s*:\s*(.+)",
    re.IGNORECASE | re.DOTALL | re.MULTILINE,
)


def parse_generated(text: str, candidates: int) -> Generated:
    match = _GENERATED.search(text)
    if not match:
        raise Malformed("not in the form 'Logic: / Question: / Answer:'")
    choice, question, answer = int(match.group(1)), match.group(2).strip(), match.group(3).strip()
    if not 1 <= choice <= candidates:
        raise Malformed(f"logic {choice} is not one of the {candidates} candidates")
    if not question or not answer:
        raise Malformed("an empty question or answer")
    return Generated(choice - 1, question, answer)


def parse_long_answer(text: str) -> tuple[str, str]:
    """``(thinking, answer)`` of a ``<think>…</think> answer`` response (an answer whose opening tag the chat
    template already wrote, starting inside the thinking, is accepted)."""
    if "</think>" not in text:
        raise Malformed("no </think>")
    thinking, answer = text.split("</think>", 1)
    thinking, answer = thinking.split("<think>", 1)[-1].strip(), answer.strip()
    if not thinking or not answer:
        raise Malformed("an empty thinking or answer")
    return thinking, answer
