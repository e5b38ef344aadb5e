"""The ``search`` task (QAgent): questions about zoo's embedded world (:mod:`zoo.search.world`), answered by
searching its corpus, with teacher transcripts for the SFT warm start.

A problem's prompt asks the question (``prompt: short``, ``"Answer the question by searching.\\nQuestion: …\\n"``,
for tiny models; ``prompt: paper``, the paper's Table 5 instructions); its reference is the answer; its solution
is a transcript, environment observations included, written by a teacher:

- the competent teacher (share ``1 - teacher_error``) plans each hop, searches ``"{entity} {keyword}"``, reads the
  passage the environment returns, reflects on what it found, then answers;
- the sloppy teacher searches the question as it is, once, and answers what an extractive reading of the passage
  offers: right for one hop, the bridge entity (wrong) for two;
- the memory teacher (share ``memory``, 0 by default) searches every hop but the last and answers the last from
  what it knows.

SFT masks the observations (:data:`zoo.tasks.base.Task.observation`), as RL does. The observations are produced by
:class:`zoo.envs.search.SearchEnvironment` itself, so SFT and RL see the same text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from zoo.envs.search import SearchEnvironment
from zoo.errors import DataError
from zoo.io.jsonl import read_jsonl
from zoo.search.readers import ExtractiveReader, reader_prompt
from zoo.search.rewards import cover_match, normalize_answer
from zoo.search.tags import retrieved_passages
from zoo.search.world import Question, default_world

PROMPTS = {
    "short": "Answer the question by searching.\nQuestion: {question}\n",
    "paper": (
        "Answer the given question. You will go through a loop of: <plan>xxx</plan> <search>xxx</search> "
        "<information>xxx</information> <reflection>xxx</reflection> <plan>xxx</plan>(if not complete) ... "
        "<reflection>xxx</reflection> <answer>xxx</answer>. First plan what to find, then call a search engine to "
        "search multiple queries (no more than 3) by <search> <query>query1</query> <query>query2</query> "
        "</search>; it returns the results between <information> and </information>. Reflect on them within "
        "<reflection></reflection>. If you find no further external knowledge is needed, give the answer within "
        "<answer></answer>, without detailed illustrations. The answer, 'xxx', should be a few short words. "
        "Question: {question}.\n"
    ),
}


def read_questions(path: str | Path) -> list:
    """Questions of your own, one JSON object a line: ``{"question", "answer"}``, or several acceptable answers as a
    list in ``"answers"`` or ``"golden_answers"`` (NQ / HotpotQA in Search-R1's files), asked with the paper's
    prompt; the reference of several answers is their JSON list (:func:`golds_of`). The solution is the bare answer
    (no transcript: SFT warm starts use the embedded world)."""
    from zoo.tasks.base import Problem

    path = Path(path)
    problems = []
    for number, row in read_jsonl(path):
        question = row.get("question")
        answers = next((row[k] for k in ("answer", "answers", "golden_answers") if k in row), None)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(question, str) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}:{number}: a question needs a 'question' string and an 'answer' (or 'answers', "
                            "'golden_answers': strings)")  # fmt: skip
        if not question.strip():
            raise DataError(f"{path}:{number}: the question is empty")
        if (empty := next((a for a in answers if not normalize_answer(a)), None)) is not None:
            raise DataError(
                f"{path}:{number}: the answer {empty!r} is nothing once normalised (case, punctuation and the "
                "articles a/an/the are dropped before matching): an empty <answer></answer> would match it"
            )
        reference = answers[0] if len(answers) == 1 else json.dumps(answers)
        problems.append(Problem(PROMPTS["paper"].format(question=question.strip().rstrip("?.") + "?"), reference,
                                f"<answer>{answers[0]}</answer>"))  # fmt: skip
    return problems


def golds_of(reference: str) -> str | list[str]:
    """The acceptable answers a problem's reference holds: one, or a JSON list of several."""
    if reference.startswith("["):
        try:
            answers = json.loads(reference)
        except json.JSONDecodeError:
            return reference
        if isinstance(answers, list) and all(isinstance(a, str) for a in answers):
            return answers
    return reference


def question_of(prompt: str) -> str:
    """The question a prompt of :data:`PROMPTS` asks (what the frozen reader is given)."""
    _, marker, rest = prompt.rpartition("Question: ")
    question = rest.strip() if marker else prompt.strip()
    return question[:-1] if question.endswith("?.") else question.removesuffix(".")


TEACHERS = ("competent", "sloppy", "memory")


def teacher_transcript(question: Question, teacher: str, environment: SearchEnvironment) -> str:
    """The transcript of a teacher's trajectory (one of :data:`TEACHERS`), observations included."""
    text = ""

    def act(turn: str) -> str:
        return turn + environment.step(turn).observation

    if teacher == "memory":  # the last hop from what it knows: no search for it
        for hop in question.hops[:-1]:
            text += act(f"<plan>look up {hop.entity}</plan><search><query>{hop.entity} {hop.keyword}</query></search>")
            text += f"<reflection>{hop.finding}</reflection>"
        return text + f"<plan>recall {question.hops[-1].entity}</plan><answer>{question.answer}</answer>"
    if teacher == "sloppy":
        searched = act(f"<plan>look up the question</plan><search><query>{question.text}</query></search>")
        answer = ExtractiveReader.answer(question.text, retrieved_passages(searched))
        return searched + f"<reflection>found {answer}</reflection><answer>{answer}</answer>"
    for hop in question.hops:
        text += act(f"<plan>look up {hop.entity}</plan><search><query>{hop.entity} {hop.keyword}</query></search>")
        text += f"<reflection>{hop.finding}</reflection>"
    return text + f"<answer>{question.answer}</answer>"


def reader_problems(count: int, seed: int, distractors: int = 1) -> list:
    """A frozen reader's training data (a second reader beside the extractive one): the reader's prompt over some
    passages and a world question, answered in a few words. Half the time the passages are the question's hops'
    (the answer is there), a quarter the first hop's only, a quarter none of them; ``distractors`` random passages
    are mixed in at random places. The answer is the gold when its passage is there, else what an extractive
    reading offers (a reader answers from what it reads)."""
    from zoo.tasks.base import Problem

    world, rng = default_world(), random.Random(seed)
    titles = {p.title: p for p in world.passages}
    problems = []
    for _ in range(count):
        question = rng.choice(world.questions)
        hops = [titles[h.entity] for h in question.hops]
        draw = rng.random()
        shown = hops if draw < 0.5 else hops[:1] if draw < 0.75 else []
        for distractor in rng.sample(world.passages, distractors):
            shown.insert(rng.randint(0, len(shown)), distractor)
        known = cover_match(" ".join(p.text for p in shown), question.answer)
        answer = question.answer if known else ExtractiveReader.answer(question.text, shown)
        problems.append(Problem(reader_prompt(question.text, shown), question.answer, f" {answer}"))
    return problems


def search_problems(
    count: int, seed: int, teacher_error: float = 0.5, prompt: str = "short", memory: float = 0.0
) -> list:
    """``count`` questions of the world, drawn without replacement while they last (seeded), each with a
    teacher's transcript: sloppy with probability ``teacher_error``, from memory with probability ``memory`` (the
    last hop answered without searching it: the answer the teacher knows; a policy that learns this route answers
    held-out questions from what it memorised of the training transcripts, the parametric route of notes §5.8),
    competent otherwise."""
    from zoo.tasks.base import Problem

    if prompt not in PROMPTS:
        raise DataError(f"data.options.prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
    if not (0 <= teacher_error and 0 <= memory and teacher_error + memory <= 1):
        raise DataError(f"data.options.teacher_error and memory must be >= 0 and sum to <= 1, got {teacher_error!r}, "
                        f"{memory!r}")  # fmt: skip
    world, rng = default_world(), random.Random(seed)
    environment = SearchEnvironment("world")
    order: list[Question] = []
    while len(order) < count:
        order += rng.sample(world.questions, len(world.questions))
    problems = []
    for question in order[:count]:
        draw = rng.random()
        teacher = "sloppy" if draw < teacher_error else "memory" if draw < teacher_error + memory else "competent"
        transcript = teacher_transcript(question, teacher, environment)
        problems.append(Problem(PROMPTS[prompt].format(question=question.text), question.answer, transcript))
    return problems
