"""The ``search`` task (QAgent): questions about zoo's embedded world (:mod:`zoo.search.world`), answered by
searching its corpus, with teacher transcripts for the SFT warm start.

A problem's prompt asks the question (``prompt: short``, ``"Answer the question by searching.\\nQuestion: …\\n"``,
for tiny models; ``prompt: paper``, the paper's Table 5 instructions); its reference is the answer; its solution
is a transcript, environment observations included, written by a teacher:

- the competent teacher (share ``1 - teacher_error``) plans each hop, searches ``"{entity} {keyword}"``, reads the
  passage the environment returns, reflects on what it found, then answers;
- the sloppy teacher searches the question as it is, once, and answers what an extractive reading of the passage
  offers: right for one hop, the bridge entity (wrong) for two.

SFT masks the observations (:data:`zoo.rl.tasks.Task.observation`), as RL does. The observations are produced by
:class:`zoo.envs.search.SearchEnvironment` itself, so SFT and RL see the same text.
"""

from __future__ import annotations

import random

from zoo.envs.search import SearchEnvironment
from zoo.errors import DataError
from zoo.search.readers import ExtractiveReader
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


def question_of(prompt: str) -> str:
    """The question a prompt of :data:`PROMPTS` asks (what the frozen reader is given)."""
    _, marker, rest = prompt.rpartition("Question: ")
    question = rest.strip() if marker else prompt.strip()
    return question[:-1] if question.endswith("?.") else question


def teacher_transcript(question: Question, sloppy: bool, environment: SearchEnvironment) -> str:
    """The transcript of a teacher's trajectory, observations included."""
    text = ""

    def act(turn: str) -> str:
        return turn + environment.step(turn).observation

    if sloppy:
        turn = f"<plan>look up the question</plan><search><query>{question.text}</query></search>"
        found = environment.retriever.search([question.text], environment.top_k)[0]
        answer = ExtractiveReader.answer(question.text, found)
        return act(turn) + f"<reflection>found {answer}</reflection><answer>{answer}</answer>"
    for hop in question.hops:
        text += act(f"<plan>look up {hop.entity}</plan><search><query>{hop.entity} {hop.keyword}</query></search>")
        text += f"<reflection>{hop.finding}</reflection>"
    return text + f"<answer>{question.answer}</answer>"


def search_problems(count: int, seed: int, teacher_error: float = 0.5, prompt: str = "short") -> list:
    """``count`` questions of the world, drawn without replacement while they last (seeded), each with a
    teacher's transcript (sloppy with probability ``teacher_error``)."""
    from zoo.rl.tasks import Problem

    if prompt not in PROMPTS:
        raise DataError(f"data.options.prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
    if not 0 <= teacher_error <= 1:
        raise DataError(f"data.options.teacher_error must lie in [0, 1], got {teacher_error!r}")
    world, rng = default_world(), random.Random(seed)
    environment = SearchEnvironment("world")
    order: list[Question] = []
    while len(order) < count:
        order += rng.sample(world.questions, len(world.questions))
    problems = []
    for question in order[:count]:
        sloppy = rng.random() < teacher_error
        transcript = teacher_transcript(question, sloppy, environment)
        problems.append(Problem(PROMPTS[prompt].format(question=question.text), question.answer, transcript))
    return problems
