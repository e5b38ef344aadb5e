"""Thinking budgets (BARD, Niu et al. 2025, arXiv:2511.01470; the project's notes §4): a teacher's chain of
thought whose optional steps a compressor drops to fit a budget, the budget's place in the prompt, and the reward
that multiplies correctness by budget fidelity.

A completion reads ``<think>THOUGHTS</think> ANSWER``; its thinking length L counts the tokenizer's tokens of
THOUGHTS (re-tokenized from the text; a completion that never closes ``</think>`` thinks to its end and has no
answer). The budget b (tokens) is a control line before the question: ``Thinking budget: b tokens.``.

- :func:`compress`: the teacher's essential steps always, then its optional steps (re-derivations,
  verifications) in priority order while the thinking still fits b; None when the essential steps alone do not
  (the compressor never claims a budget it misses).
- Fidelity g(L, b) (the paper's exact shape is not published; both of the notes' readings):
  ``upper``: 1 if L ≤ b, then linear decay to 0 at L = 2b, ``max(0, 1 − (L − b)/b)``;
  ``tracking``: ``exp(−|L − b| / (σ·b))``.
- :class:`BudgetReward`: ``R = 1[correct] · g(L, b)`` (``combine: product``, the paper's), or the ablation
  ``R = 1[correct] + λ·g`` (``combine: sum``); without a budget line in the prompt g = 1. Its parts
  (correct, fidelity, thinking length) are logged like any reward's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from zoo.tasks.base import Thought

OPEN, CLOSE = "<think>", "</think>"
FIDELITIES = ("upper", "tracking")
COMBINATIONS = ("product", "sum")
_BUDGET = re.compile(r"^Thinking budget: (\d+) tokens\.$", re.MULTILINE)


def thinking(thoughts: Sequence[Thought]) -> str:
    return " ".join(t.text for t in thoughts)


def render(thoughts: Sequence[Thought], answer: str) -> str:
    """The completion a chain teaches: ``<think>…</think> answer``."""
    return f"{OPEN}{thinking(thoughts)}{CLOSE} {answer}"


def compress(thoughts: Sequence[Thought], budget: int, count: Callable[[str], int]) -> list[Thought] | None:
    """The steps of ``thoughts`` whose thinking fits ``budget`` tokens (``count`` measures a text): every
    essential step, then each optional step in priority order (ties: first in the chain first) if it still fits;
    in chain order. None when the essential steps alone exceed the budget."""
    kept = {i for i, t in enumerate(thoughts) if not t.optional}
    if count(thinking([thoughts[i] for i in sorted(kept)])) > budget:
        return None
    for i in sorted((i for i, t in enumerate(thoughts) if t.optional), key=lambda i: (thoughts[i].priority, i)):
        if count(thinking([thoughts[j] for j in sorted(kept | {i})])) <= budget:
            kept.add(i)
    return [thoughts[i] for i in sorted(kept)]


def budget_line(budget: int) -> str:
    return f"Thinking budget: {budget} tokens.\n"


def read_budget(prompt: str) -> int | None:
    """The budget a prompt's control line sets, or None."""
    found = _BUDGET.search(prompt)
    return int(found.group(1)) if found else None


def split_completion(completion: str) -> tuple[str, str | None]:
    """(thinking text, answer): the answer is what follows ``</think>``, None if the thinking never closes."""
    head, closed, answer = completion.partition(CLOSE)
    thought = head.split(OPEN, 1)[1] if OPEN in head else head
    return thought, (answer.strip() if closed else None)


def upper_fidelity(length: int, budget: int) -> float:
    return 1.0 if length <= budget else max(0.0, 1.0 - (length - budget) / budget)


def tracking_fidelity(length: int, budget: int, sigma: float = 0.25) -> float:
    return math.exp(-abs(length - budget) / (sigma * budget))


@dataclass
class BudgetReward:
    """``correct · g(L, b)`` (or ``correct + weight · g``); a zoo reward: ``(score, parts)`` per completion."""

    count: Callable[[str], int]  # tokens of a text (the policy's tokenizer)
    fidelity: str = "upper"
    sigma: float = 0.25  # tracking fidelity's width, relative to b
    combine: str = "product"
    weight: float = 1.0  # λ of the additive ablation

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise ValueError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {self.fidelity!r}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {', '.join(COMBINATIONS)}, got {self.combine!r}")

    def __call__(self, prompt: str, completion: str, reference: str) -> tuple[float, dict[str, float]]:
        thought, answer = split_completion(completion)
        correct = float(answer is not None and answer == reference.strip())
        length = self.count(thought)
        budget = read_budget(prompt)
        if budget is None:
            g = 1.0
        elif self.fidelity == "upper":
            g = upper_fidelity(length, budget)
        else:
            g = tracking_fidelity(length, budget, self.sigma)
        score = correct * g if self.combine == "product" else correct + self.weight * g
        return score, {"correct": correct, "fidelity": g, "thinking_length": float(length)}


@dataclass
class BudgetOptions:
    """``data.budgets``: the levels a budgeted task trains and is evaluated at, and its reward."""

    levels: list[int] = field(default_factory=list)
    fidelity: str = "upper"
    sigma: float = 0.25
    combine: str = "product"
    weight: float = 1.0

    @classmethod
    def from_dict(cls, values: dict) -> BudgetOptions:
        from zoo.errors import ConfigError, config_section

        options = config_section(cls, values, "data.budgets")
        levels = options.levels
        if not isinstance(levels, list | tuple) or not levels or not all(isinstance(b, int) and b > 0 for b in levels):
            raise ConfigError(f"data.budgets.levels must be a list of positive token counts, got {levels!r}")
        options.levels = sorted(levels)
        if options.fidelity not in FIDELITIES:
            raise ConfigError(f"data.budgets.fidelity must be one of {', '.join(FIDELITIES)}, got {options.fidelity!r}")
        if options.combine not in COMBINATIONS:
            raise ConfigError(f"data.budgets.combine must be one of {', '.join(COMBINATIONS)}, got {options.combine!r}")
        if not options.sigma > 0:
            raise ConfigError(f"data.budgets.sigma must be > 0, got {options.sigma!r}")
        return options

    def reward(self, count: Callable[[str], int]) -> BudgetReward:
        return BudgetReward(count, self.fidelity, self.sigma, self.combine, self.weight)


def with_budget(problem, budget: int, count: Callable[[str], int] | None = None):
    """``problem`` (a :class:`zoo.tasks.base.Problem` with thoughts) asked under ``budget``: the control line before
    its prompt and, given ``count``, its teacher's chain compressed to the budget as the solution (None when the
    chain cannot fit)."""
    prompt = budget_line(budget) + problem.prompt
    if count is None:
        return replace(problem, prompt=prompt)
    kept = compress(problem.thoughts, budget, count)
    return None if kept is None else replace(problem, prompt=prompt, solution=render(kept, problem.reference))
