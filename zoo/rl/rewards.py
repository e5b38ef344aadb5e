"""Rewards: ``(prompt, completion, reference) → float`` (or ``(float, {name: sub-score})``), and a runner that
scores a batch with a time limit per call.

A reward that raises, returns something other than a finite number (NaN, inf, None, a string, a list, a malformed
``(score, parts)`` tuple) or exceeds its time limit scores 0; the runner counts it, logs why, and training goes
on. See :class:`RewardRunner` for how hung calls are handled.

Rewards shipped here:

- :func:`math_reward`: the completion's final answer equals the reference under math-verify (LaTeX or plain
  expressions, ``\\boxed{}`` preferred);
- :func:`gsm8k_reward`: GSM8K's convention, the number after ``####`` (commas dropped) equals the reference's;
- :func:`exact_match_reward`: the stripped completion equals the stripped reference;
- :class:`FormatReward`: 1 if the completion matches a regular expression;
- :class:`WeightedReward`: a weighted sum of named rewards, every part logged.

:func:`overlong_penalty` is DAPO's soft length penalty, added to a completion's reward by the RL module
(``module.algorithm.overlong_buffer``).

:func:`reward_function` finds one by name (``exact_match``, ``math_verify``, ``gsm8k``) or by import path
(``package.module:function``): how ``data.reward`` replaces a task's own check.
"""

from __future__ import annotations

import logging
import math
import numbers
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import torch

from zoo.errors import ConfigError

RewardFn = Callable[[str, str, str], "float | tuple[float, dict[str, float]]"]
log = logging.getLogger(__name__)
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


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13), times ``factor``: 0 for a
    completion of at most ``max_length − buffer`` tokens, ``((max_length − buffer) − |y|) / buffer`` over the buffer
    (falling linearly to −1 at ``max_length``), −1 beyond."""
    start = max_length - buffer
    over = (lengths.to(torch.float32) - start).clamp(min=0) / buffer
    return -factor * over.clamp(max=1)


REWARDS: dict[str, RewardFn] = {"exact_match": exact_match_reward, "math_verify": math_reward, "gsm8k": gsm8k_reward}


def reward_function(spec: str, key: str = "data.reward") -> RewardFn:
    """The reward ``spec`` names: one of :data:`REWARDS`, or ``package.module:function`` (a callable taking
    ``(prompt, completion, reference)``)."""
    if not isinstance(spec, str):
        raise ConfigError(f"{key} must be a reward's name or package.module:function, got {spec!r}")
    if spec in REWARDS:
        return REWARDS[spec]
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise ConfigError(f"{key} {spec!r} is neither a reward ({', '.join(REWARDS)}) nor package.module:function")
    try:
        function = getattr(import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{key} {spec!r} cannot be imported: {error}") from None
    if not callable(function):
        raise ConfigError(f"{key} {spec!r} is not callable")
    return function


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
        scores = {name: checked(fn(prompt, completion, reference))[0] for name, (_, fn) in self.parts.items()}
        return sum(self.parts[name][0] * s for name, s in scores.items()), scores


class InvalidReward(ValueError):
    """A reward returned something that is not a score."""


def _finite(value: Any, what: str) -> float:
    if isinstance(value, numbers.Real) or (hasattr(value, "numel") and value.numel() == 1):
        number = float(value)
        if math.isfinite(number):
            return number
        raise InvalidReward(f"{what} is not finite: {number}")
    raise InvalidReward(f"{what} is not a number: {type(value).__name__} {str(value)[:60]!r}")


def checked(result: Any) -> tuple[float, dict[str, float]]:
    """A reward's result as ``(score, {name: sub-score})``, every number finite; :class:`InvalidReward` otherwise."""
    if not isinstance(result, tuple):
        return _finite(result, "the score"), {}
    if len(result) != 2 or not isinstance(result[1], dict):
        raise InvalidReward(f"a reward tuple must be (score, {{name: sub-score}}), got {str(result)[:60]}")
    parts = {str(name): _finite(value, f"sub-score {name!r}") for name, value in result[1].items()}
    return _finite(result[0], "the score"), parts


@dataclass
class RewardBatch:
    scores: torch.Tensor  # (N,)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (N,)
    failures: int = 0  # calls that raised or returned something that is not a finite score
    timeouts: int = 0  # calls that ran past the limit
    errors: list[str] = field(default_factory=list)  # the first few reasons, for the log


class _Call:
    """One reward call of a batch, as the runner and its workers see it."""

    __slots__ = ("index", "args", "started", "outcome", "results")

    def __init__(self, index: int, args: tuple[str, str, str], results: queue.SimpleQueue) -> None:
        self.index, self.args, self.results = index, args, results
        self.started: float | None = None  # monotonic time a worker took it
        self.outcome: str | None = None  # "done" or "timeout", whichever is decided first


class RewardRunner:
    """Score completions with ``reward`` on ``workers`` daemon threads, at most ``timeout_s`` per call.

    A call's time limit counts from when a worker starts it, so calls queued behind slow ones are never
    charged for the wait. A call past its limit scores 0 and is abandoned: its thread is left to finish in the
    background (its result is dropped, then the thread ends) and a new thread takes its place at once, so hung
    calls never starve the healthy ones of a batch. A batch therefore takes its healthy work plus at most
    ⌈hung calls / workers⌉ limits. The threads are daemons: a reward that never returns does not keep the
    process alive after training ends. (Python cannot kill a thread; a reward that may spin forever on the CPU
    should bound itself, as math-verify's parsers can.)
    """

    def __init__(self, reward: RewardFn, timeout_s: float = 10.0, workers: int = 8) -> None:
        if timeout_s <= 0 or workers < 1:
            raise ValueError(f"the reward runner needs timeout_s > 0 and workers >= 1, got {timeout_s}, {workers}")
        self.reward, self.timeout_s, self.workers = reward, timeout_s, workers
        self.total_failures = self.total_timeouts = 0
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards every call's ``started`` and ``outcome``
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._work, name="reward", daemon=True).start()

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:  # closed
                return
            with self._lock:
                call.started = time.monotonic()
            try:
                result: Any = checked(self.reward(*call.args))
            except Exception as e:  # a reward that throws scores 0 and is counted, never stops training
                result = e
            with self._lock:
                if call.outcome == "timeout":
                    return  # abandoned: a new worker already took this one's place
                call.outcome = "done"
            call.results.put((call.index, result))

    def score(self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str]) -> RewardBatch:
        return self.submit(prompts, completions, references).wait()

    def submit(self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str]) -> PendingRewards:
        """Start scoring a batch and return at once: the workers score it while the caller goes on (queue
        scheduling overlaps rewards with generation this way)."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        calls = [_Call(i, args, results) for i, args in enumerate(zip(prompts, completions, references, strict=True))]
        for call in calls:
            self._calls.put(call)
        return PendingRewards(self, calls, results)

    def submit_answers(self, problems: Sequence[dict[str, Any]], completions: Sequence[str]) -> PendingRewards:
        """:meth:`submit` for completions of prompt-dataset problems (each with ``prompt`` and ``reference``)."""
        return self.submit([p["prompt"] for p in problems], completions, [p["reference"] for p in problems])

    def _record(self, batch: RewardBatch) -> None:
        self.total_failures += batch.failures
        self.total_timeouts += batch.timeouts
        if batch.failures or batch.timeouts:
            log.warning(
                "reward: %d of %d calls failed, %d timed out after %gs%s",
                batch.failures,
                len(batch.scores),
                batch.timeouts,
                self.timeout_s,
                f" (first: {batch.errors[0]})" if batch.errors else "",
            )

    def close(self) -> None:
        """Let the idle workers end (an abandoned one ends when its call returns)."""
        for _ in range(self.workers):
            self._calls.put(None)

    def _wait(self, calls: list[_Call]) -> float:
        """Seconds until the earliest running call reaches its limit (the limit if none is running yet)."""
        with self._lock:
            starts = [c.started for c in calls if c.outcome is None and c.started is not None]
        if not starts:
            return self.timeout_s
        return max(min(starts) + self.timeout_s - time.monotonic(), 0.001)

    def _abandon_overdue(self, calls: list[_Call], batch: RewardBatch) -> int:
        now, overdue = time.monotonic(), 0
        with self._lock:
            for call in calls:
                if call.outcome is None and call.started is not None and now - call.started >= self.timeout_s:
                    call.outcome = "timeout"
                    overdue += 1
        batch.timeouts += overdue
        for _ in range(overdue):
            self._spawn()
        return overdue


class PendingRewards:
    """A batch being scored by a :class:`RewardRunner`: :meth:`ready` checks without blocking, :meth:`wait`
    blocks until every call is done or past its limit. ``submitted`` and ``finished`` are monotonic times."""

    def __init__(self, runner: RewardRunner, calls: list[_Call], results: queue.SimpleQueue) -> None:
        self.runner, self.calls, self.results = runner, calls, results
        self.batch = RewardBatch(torch.zeros(len(calls)))
        self.parts: dict[str, list[float]] = {}
        self.pending = len(calls)
        self.submitted, self.finished = time.monotonic(), None

    def _take(self, index: int, result: Any) -> None:
        self.pending -= 1
        if isinstance(result, Exception):
            self.batch.failures += 1
            if len(self.batch.errors) < 3:
                self.batch.errors.append(f"{type(result).__name__}: {result}")
            return
        self.batch.scores[index], sub_scores = result
        for name, value in sub_scores.items():
            self.parts.setdefault(name, [0.0] * len(self.calls))[index] = value

    def ready(self) -> bool:
        while self.pending:
            try:
                self._take(*self.results.get_nowait())
            except queue.Empty:
                self.pending -= self.runner._abandon_overdue(self.calls, self.batch)
                break
        return self._settle()

    def wait(self) -> RewardBatch:
        while self.pending:
            try:
                self._take(*self.results.get(timeout=self.runner._wait(self.calls)))
            except queue.Empty:
                self.pending -= self.runner._abandon_overdue(self.calls, self.batch)
        self._settle()
        return self.batch

    def _settle(self) -> bool:
        if self.pending or self.finished is not None:
            return not self.pending
        self.finished = time.monotonic()
        self.batch.parts = {name: torch.tensor(values) for name, values in self.parts.items()}
        self.runner._record(self.batch)
        return True
