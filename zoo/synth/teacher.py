"""A template teacher for DESIGNER's prompts: a well-formed answer to each of the pipeline's prompts, made by
rules from the prompt alone (deterministic). It is what a tiny offline writer model is fine-tuned on
(``data.task=designer``), so that zoo's own small model can run every stage of the pipeline end to end on a
CPU, and what the tests' canned server answers. Its content is shallow by design: the figures it helps produce
are the pipeline's counts and filters, not question quality.

- annotation: the discipline by keywords (the first taxonomy entry whose keywords occur; else ``other``), the
  difficulty by the number of numbers and words, the type ``calculation`` when the question holds numbers;
- design logic: four steps naming the question's own content words, as a Mermaid flowchart;
- generation: logic 1, a question on the source's first content words, the next words as the answer;
- long answer: a short ``<think>`` restating the question, then an answer.
"""

from __future__ import annotations

import re

KEYWORDS = {
    "mathematics": ("number", "sum", "how many", "how much", "total", "percent", "equation", "integer", "$"),
    "chemistry": ("compound", "chemist", "discover", "element", "reaction", "molecule"),
    "physics": ("velocity", "energy", "force", "mass", "telescope", "planet", "light"),
    "computer science": ("python", "function", "module", "class", "method", "object", "return", "string"),
}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]{3,}")
_STOP = {"the", "and", "for", "with", "that", "this", "what", "which", "how", "does", "are", "was", "were", "from"}


def kind_of(prompt: str) -> str:
    if prompt.startswith("Classify this exam question"):
        return "annotate"
    if "Reverse-engineer how the examiner" in prompt:
        return "extract"
    if "Candidate design logics" in prompt:
        return "generate"
    return "answer"


def _content_words(text: str, count: int) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP]
    return words[:count] or ["it"]


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0] if start in text else text


def annotate(question: str) -> str:
    lowered = question.lower()
    discipline = next((d for d, words in KEYWORDS.items() if any(w in lowered for w in words)), "other")
    numbers, words = len(_NUMBER.findall(question)), len(question.split())
    score = numbers + words // 25
    difficulty = "Very Hard" if score >= 6 else "Hard" if score >= 4 else "Medium" if score >= 2 else "Easy"
    kind = "calculation" if numbers else "short answer"
    return f"Discipline: {discipline}\nDifficulty: {difficulty}\nType: {kind}"


def design_logic(question: str) -> str:
    w = _content_words(question, 6)
    steps = [f"identify {w[0]}", f"relate {' '.join(w[1:3]) or w[0]}", f"build scenario {' '.join(w[3:5]) or w[0]}"]
    steps.append(f"ask for {w[-1]}")
    body = "\n".join(f"    S{i}[{s}] --> S{i + 1}" for i, s in enumerate(steps[:-1]))
    return f"```mermaid\nflowchart TD\n{body}\n    S{len(steps) - 1}[{steps[-1]}]\n```"


def generated(source: str) -> str:
    words = source.split()
    question = f"What does the text say about {' '.join(words[:10])}?"
    return f"Logic: 1\nQuestion: {question}\nAnswer: {' '.join(words[10:16]) or words[-1]}"


def long_answer(question: str) -> str:
    w = _content_words(question, 8)
    thinking = f"The question asks about {' '.join(w[:4])}. The text relates {' '.join(w[4:])}."
    return f"<think>\n{thinking}\n</think>\n\n{w[-1]}"


def teacher_answer(prompt: str) -> str:
    kind = kind_of(prompt)
    if kind == "annotate":
        return annotate(_between(prompt, "Question: ", "\n\nDisciplines:"))
    if kind == "extract":
        return design_logic(_between(prompt, "Question: ", "\n"))
    if kind == "generate":
        return generated(_between(prompt, "Source text:\n", "\n\nCandidate design logics"))
    return long_answer(prompt.split("\n\nThink it through", 1)[0])
