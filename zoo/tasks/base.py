"""What a verifiable task is: a :class:`Problem` (a prompt, its reference answer, a worked solution and, for
budgeted tasks, a teacher's chain of thought in :class:`Thought` steps) and a :class:`Task` (the reward that checks a
completion, and how its prompts are asked). A leaf: the registry (:mod:`zoo.tasks.registry`) and the papers'
packages that define tasks (``zoo.search``, ``zoo.synth``) import it, it imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Thought:
    """One step of a teacher's chain of thought."""

    text: str
    optional: bool = False
    priority: int = 0  # optional steps are kept lowest priority first while the budget allows


@dataclass(frozen=True)
class Problem:
    prompt: str
    reference: str
    solution: str  # what a supervised example answers (the reference, or a worked solution)
    thoughts: tuple[Thought, ...] = ()  # a teacher's chain of thought with optional steps (budgeted tasks)


@dataclass(frozen=True)
class Task:
    reward: Callable[[str, str, str], float]
    generated: bool  # True: made by a generator; False: read from data.path
    system: str  # the system prompt of a chat-formatted prompt (zoo.text.chat), written for the task's reward
    final_answer: Callable[[str], str] = str.strip  # the answer a reference states (RAVR conditions on it)
    observation: str | None = None  # a regex of what an environment wrote into a solution (masked in SFT)
