"""A template teacher for DESIGNER's prompts: a well-formed answer to each of the pipeline's prompts, made by
rules from the prompt alone (deterministic). It is what a tiny offline writer model is fine-tuned on
(``data.task=designer``), so that zoo's own small model can run every stage of the pipeline end to end on a
CPU, and what the tests' canned server answers. Its content is shallow by design: the figures it helps produce
are the pipeline's counts and filters, not question quality.

- annotation: the discipline by keywords (the first taxonomy entry whose keywords occur; else ``other``), the
  difficulty by the number of numbers and words, the type ``calculation`` when the question holds numbers;
- design logic: four steps naming the question's own content words, as a Mermaid flowchart;
- generation: the candidate logic sharing the most words with the source, a question on the source's first
  words, the next words as the answer;
- long answer: a short ``<think>`` restating the question, then an answer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.tasks.base import Problem

KEYWORDS = {
    "mathematics": ("number", "sum", "how many", "how much", "total", "percent", "equation", "integer", "$"),
    "chemistry": ("compound", "chemist", "discover", "element", "reaction", "molecule"),
    "physics": ("velocity", "energy", "force", "mass", "telescope", "planet", "light"),
    "computer science": ("python", "function", "module", "class", "method", "object", "return", "string"),
}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]{3,}")
_STOP = {"the", "and", "for", "with", "that", "this", "what", "which", "how", "does", "are", "was", "were", "from"}
_STOP |= {"text", "say", "about"}


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


def generated(source: str, logics: list[str] = ()) -> str:
    """Logic: the candidate sharing the most words with the source (the first on a tie)."""
    words = source.split()
    seen = {w.lower() for w in _WORD.findall(source)}
    overlap = [len(seen & {w.lower() for w in _WORD.findall(logic)}) for logic in logics] or [0]
    choice = overlap.index(max(overlap)) + 1
    question = f"What does the text say about {' '.join(words[:10])}?"
    return f"Logic: {choice}\nQuestion: {question}\nAnswer: {' '.join(words[10:16]) or words[-1]}"


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
        logics = re.findall(r"```mermaid\n(.*?)```", prompt.split("Candidate design logics", 1)[1], re.DOTALL)
        return generated(_between(prompt, "Source text:\n", "\n\nCandidate design logics"), logics)
    return long_answer(prompt.split("\n\nThink it through", 1)[0])


def designer_problems(
    count: int,
    seed: int,
    bank: list[str] | None = None,
    sources: list[str] | None = None,
    max_words: int = 60,
    top_k: int = 5,
    with_answer: bool = True,
) -> list[Problem]:
    """``count`` problems (a prompt, the teacher's answer as reference and solution) over the pipeline's four LLM
    prompts in equal shares, built from
    ``bank`` questions and ``sources`` segments (the pipeline's own specs; default ``embedded``) exactly as the
    pipeline builds them (``with_answer``: extraction prompts show the bank's answers, as ``extract.with_answer``),
    with the default taxonomy: what a writer model is fine-tuned on."""
    import random

    from zoo.synth import prompts
    from zoo.synth.pipeline import annotation_prompt, default_taxonomy
    from zoo.synth.sources import load_bank, load_segments
    from zoo.tasks.base import Problem

    rng = random.Random(seed)
    questions = load_bank(bank or ["embedded"])
    segments = load_segments(sources or ["embedded"], max_words, min_words=10)
    segments = [s for s in segments if len(s.text) <= 8 * max_words]  # no runs of symbols that tokenize long
    taxonomy = default_taxonomy()
    problems = []
    for i in range(count):
        kind = ("annotate", "extract", "generate", "answer")[i % 4]
        question = rng.choice(questions)
        if kind == "annotate":
            prompt = annotation_prompt(taxonomy).replace("{question}", question.text)
        elif kind == "extract":
            prompt = prompts.extract_prompt(question.text, question.answer if with_answer else None)
        elif kind == "generate":
            logics = [prompts.parse_logic(design_logic(q.text), 3)[0] for q in rng.sample(questions, top_k)]
            prompt = prompts.generate_prompt(rng.choice(segments).text, logics)
        else:
            segment = rng.choice(segments).text
            prompt = prompts.ANSWER.format(question=generated(segment).split("\nQuestion: ", 1)[1].split("\n")[0])
        answer = teacher_answer(prompt)
        problems.append(Problem(prompt, answer, answer))
    return problems


def accepted(prompt: str, completion: str) -> bool:
    """Whether the pipeline's parser for this prompt's stage takes ``completion`` (with the default taxonomy)."""
    from zoo.synth import prompts
    from zoo.synth.pipeline import default_taxonomy

    kind = kind_of(prompt)
    try:
        if kind == "annotate":
            taxonomy = default_taxonomy()
            prompts.parse_annotation(completion, taxonomy["disciplines"], taxonomy["types"])
        elif kind == "extract":
            prompts.parse_logic(completion, 3)
        elif kind == "generate":
            prompts.parse_generated(completion, prompt.count("```mermaid"))
        else:
            prompts.parse_long_answer(completion)
    except prompts.Malformed:
        return False
    return True
