"""A policy under thinking budgets, level by level (BARD; notes §4.4): accuracy, thinking length and budget
adherence, and the "truncate the chain at b" baseline on the same model.

For each level b every question is asked with b's control line and answered greedily. Per level:

- ``accuracy``: the share of answers after ``</think>`` equal to the reference (pass@1, greedy);
- ``length``: the mean thinking length L (tokens of the text inside ``<think>…</think>``);
- ``within_budget``: the share with L ≤ b; ``relative_error``: the mean |L − b| / b.

The truncation baseline asks each question at the largest level (the model's unconstrained thinking), stops the
thinking after b tokens, closes it with ``</think>`` and lets the model answer: what cutting a long chain gives
without budget-aware training.

A model trained without budgets (``control_line=False``) is asked as it was trained, without the control line: its
answers are the same at every level, scored against each b, and its truncation baseline is the classic one (a
budget-agnostic model's chain cut at b).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zoo.generation.sampling import SamplingParams
from zoo.rl.methods.bard import CLOSE, OPEN, budget_line, split_completion

ANSWER_TOKENS = 16  # what an answer after a forced </think> may take


@dataclass
class LevelResult:
    budget: int
    accuracy: float
    length: float
    within_budget: float
    relative_error: float
    truncated_accuracy: float | None = None  # the truncation baseline's accuracy at this budget


def _score(texts: Sequence[str], references: Sequence[str], budget: int, count: Callable[[str], int]) -> LevelResult:
    correct, lengths = [], []
    for text, reference in zip(texts, references, strict=True):
        thought, answer = split_completion(text)
        correct.append(float(answer is not None and answer == reference.strip()))
        lengths.append(count(thought))
    return LevelResult(
        budget,
        statistics.mean(correct),
        statistics.mean(lengths),
        statistics.mean(float(n <= budget) for n in lengths),
        statistics.mean(abs(n - budget) / budget for n in lengths),
    )


def evaluate_budgets(
    engine: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    levels: Sequence[int],
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    truncation: bool = True,
    prompt_ids: Callable[[str], list[int]] | None = None,
    control_line: bool = True,
) -> list[LevelResult]:
    """Per level, the policy's greedy answers to ``problems`` (:class:`zoo.tasks.base.Problem`, without budget
    lines) scored as the module docstring says; ``prompt_ids`` encodes a prompt (default: the tokenizer, no
    special tokens; a chat format's for chat models)."""

    def encode(text: str) -> list[int]:
        return prompt_ids(text) if prompt_ids is not None else tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    def asked(budget: int) -> list[list[int]]:
        return [encode((budget_line(budget) if control_line else "") + p.prompt) for p in problems]

    greedy = SamplingParams(max_new_tokens, 0.0, stop_token_ids=tuple(stop_token_ids))
    references = [p.reference for p in problems]
    results, answered = [], {}
    for budget in levels:
        key = budget if control_line else None  # without the control line every level asks the same
        if key not in answered:
            answered[key] = [decode(s.token_ids) for s in engine.generate(asked(budget), 1, greedy).samples]
        results.append(_score(answered[key], references, budget, count))
    if truncation:
        unconstrained = asked(max(levels))
        for result in results:
            result.truncated_accuracy = _truncated_accuracy(
                engine, unconstrained, references, result.budget, count(OPEN), encode, decode, greedy
            )
    return results


def _truncated_accuracy(engine, prompts, references, budget, opening, encode, decode, greedy) -> float:
    """Think for at most ``budget`` tokens (after the ``<think>`` opening), then close and answer."""
    thinking = SamplingParams(opening + budget, 0.0, stop_token_ids=greedy.stop_token_ids, seed=greedy.seed)
    drafts = engine.generate(prompts, 1, thinking).samples
    continued, finished = [], {}
    for i, draft in enumerate(drafts):
        text = decode(draft.token_ids)
        if draft.finish_reason != "length":  # it ended within the budget: its answer stands as it is
            finished[i] = text
        elif CLOSE in text:  # it closed its thinking within the budget, the answer was cut: let it finish that
            continued.append((i, prompts[i] + draft.token_ids, text))
        else:  # cut while thinking: close it and let it answer
            continued.append((i, prompts[i] + draft.token_ids + encode(CLOSE), text + CLOSE))
    if continued:
        answer = SamplingParams(ANSWER_TOKENS, 0.0, stop_token_ids=greedy.stop_token_ids, seed=greedy.seed)
        answers = engine.generate([ids for _, ids, _ in continued], 1, answer).samples
        for (i, _, head), sample in zip(continued, answers, strict=True):
            finished[i] = head + decode(sample.token_ids)
    correct = []
    for i, reference in enumerate(references):
        answer = split_completion(finished[i])[1]
        correct.append(float(answer is not None and answer == reference.strip()))
    return statistics.mean(correct)


def report_rows(results: Sequence[LevelResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def length_correlation(results: Sequence[LevelResult]) -> float:
    """Pearson correlation of the mean thinking length with the budget across levels (NaN when either is
    constant)."""
    lengths = [r.length for r in results]
    if len(results) < 2 or len(set(lengths)) < 2 or len({r.budget for r in results}) < 2:
        return float("nan")
    return statistics.correlation([float(r.budget) for r in results], lengths)


def markdown_table(results: Sequence[LevelResult]) -> str:
    lines = [
        "| budget | accuracy | truncated at b | thinking length | L <= b | mean abs(L - b) / b |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        truncated = "" if r.truncated_accuracy is None else f"{r.truncated_accuracy:.3f}"
        lines.append(
            f"| {r.budget} | {r.accuracy:.3f} | {truncated} | {r.length:.1f} | {r.within_budget:.3f} "
            f"| {r.relative_error:.3f} |"
        )
    return "\n".join(lines)


def figure(results: Sequence[LevelResult]):
    """Accuracy against budget (with the truncation baseline) and thinking length against budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [r.budget for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(budgets, [r.accuracy for r in results], marker="o", label="budget-aware")
    if results and results[0].truncated_accuracy is not None:
        left.plot(budgets, [r.truncated_accuracy for r in results], marker="s", label="truncated at b")
    left.set_xlabel("thinking budget b (tokens)")
    left.set_ylabel("accuracy (greedy pass@1)")
    left.legend()
    right.plot(budgets, [r.length for r in results], marker="o", label="mean thinking length")
    right.plot(budgets, budgets, linestyle="--", color="grey", label="L = b")
    right.set_xlabel("thinking budget b (tokens)")
    right.set_ylabel("tokens")
    right.legend()
    fig.tight_layout()
    return fig
