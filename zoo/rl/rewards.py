"""Rewards: ``(prompt, completion, reference) → float`` (or ``(float, {name: sub-score})``), and a runner that
scores a batch with a time limit per call.

A reward that raises or exceeds its time limit scores 0; the runner counts both and training goes on.
(A timed-out call cannot be killed: its thread finishes in the background and its result is dropped.)

Rewards shipped here:

- :func:`math_reward`: the completion's final answer equals the reference under math-verify (LaTeX or plain
  expressions, ``\\boxed{}`` preferred);
- :func:`gsm8k_reward`: GSM8K's convention, the number after ``####`` (commas dropped) equals the reference's;
- :func:`exact_match_reward`: the stripped completion equals the stripped reference;
- :class:`FormatReward`: 1 if the completion matches a regular expression;
- :class:`WeightedReward`: a weighted sum of named rewards, every part logged.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

RewardFn = Callable[[str, str, str], "float | tuple[float, dict[str, float]]"]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_answer(text: str) -> str | None:
    """The number after the last ``####`` (GSM8K's answer marker), commas removed; None if there is none."""
    if "####" not in text:
        return None
    match = _NUMBER.search(text.rsplit("####", 1)[1])
    return match.group(0).replace(",", "") if match else None


def gsm8k_reward(prompt: str, completion: str, reference: str) -> float:
    predicted, expected = gsm8k_answer(completion), gsm8k_answer(reference) or reference.strip().replace(",", "")
    if predicted is None:
        return 0.0
    try:
        return float(abs(float(predicted) - float(expected)) < 1e-6)
    except ValueError:
        return float(predicted == expected)


def exact_match_reward(prompt: str, completion: str, reference: str) -> float:
    return float(completion.strip() == reference.strip())


def math_reward(prompt: str, completion: str, reference: str) -> float:
    """math-verify's equivalence of the completion's answer and the reference (timeouts: the runner's)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeout is off
    delimited = "$" in reference or "\\boxed" in reference
    gold = parse(reference if delimited else f"${reference}$", parsing_timeout=None)
    answer = parse(completion, parsing_timeout=None)
    return float(bool(gold) and bool(answer) and verify(gold, answer, timeout_seconds=None))


@dataclass
class FormatReward:
    """1 when the completion matches ``pattern`` (``re.search``, DOTALL), else 0."""

    pattern: str

    def __post_init__(self) -> None:
        self.regex = re.compile(self.pattern, re.DOTALL)

    def __call__(self, prompt: str, completion: str, reference: str) -> float:
        return float(self.regex.search(completion) is not None)


@dataclass
class WeightedReward:
    """``Σ weight_k · reward_k``; the parts are reported under their names."""

    parts: dict[str, tuple[float, RewardFn]]

    def __call__(self, prompt: str, completion: str, reference: str) -> tuple[float, dict[str, float]]:
        scores = {name: _value(fn(prompt, completion, reference)) for name, (_, fn) in self.parts.items()}
        return sum(self.parts[name][0] * s for name, s in scores.items()), scores


def _value(result: float | tuple[float, dict[str, float]]) -> float:
    return float(result[0] if isinstance(result, tuple) else result)


@dataclass
class RewardBatch:
    scores: torch.Tensor  # (N,)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (N,)
    failures: int = 0  # calls that raised
    timeouts: int = 0  # calls that ran past the limit
    errors: list[str] = field(default_factory=list)  # the first few messages, for the log


class RewardRunner:
    """Score completions with ``reward`` in a thread pool, ``timeout_s`` per call."""

    def __init__(self, reward: RewardFn, timeout_s: float = 10.0, workers: int = 4) -> None:
        self.reward, self.timeout_s, self.workers = reward, timeout_s, workers
        self.pool = self._new_pool()
        self.total_failures = self.total_timeouts = 0

    def _new_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reward")

    def score(self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str]) -> RewardBatch:
        futures = [
            self.pool.submit(self.reward, p, c, r) for p, c, r in zip(prompts, completions, references, strict=True)
        ]
        batch = RewardBatch(torch.zeros(len(futures)))
        parts: dict[str, list[float]] = {}
        for i, future in enumerate(futures):
            try:
                result = future.result(timeout=self.timeout_s)
            except concurrent.futures.TimeoutError:
                batch.timeouts += 1
                future.cancel()
                continue
            except Exception as e:  # a reward that throws scores 0 and is counted, never stops training
                batch.failures += 1
                if len(batch.errors) < 3:
                    batch.errors.append(f"{type(e).__name__}: {e}")
                continue
            batch.scores[i] = _value(result)
            for name, value in (result[1] if isinstance(result, tuple) else {}).items():
                parts.setdefault(name, [0.0] * len(futures))[i] = float(value)
        batch.parts = {name: torch.tensor(values) for name, values in parts.items()}
        if batch.timeouts:  # hung calls keep their threads: later batches get fresh ones
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
        self.total_failures += batch.failures
        self.total_timeouts += batch.timeouts
        return batch
