"""Multi-turn rollout with environments (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3.1: environment-level
asynchronous rollout and redundant environment groups), on the native engine's request-level core.

A trajectory alternates policy turns and environment steps: its context starts as the problem's prompt (plus the
environment's first observation); each turn is a request of the engine on the whole context so far, its tokens are
appended (the policy's: trained on), the decoded turn goes to ``env.step`` and the observation's tokens are
appended (masked out of the loss), until the environment says done, ``max_turns`` turns are taken or the context
(``max_context`` tokens; an observation is cut to what fits) is full. Its reward is the sum of its steps' rewards.

- **Environment-level asynchrony** (default): every trajectory runs its own loop. An environment step runs on a
  daemon thread while the engine keeps decoding the other trajectories' turns; no trajectory waits for another's
  turn. Trajectories back from their environments are admitted together (one prefill for several) once a quarter
  of all have come back, or at once when fewer than a quarter are in the engine: measured on the agentic
  benchmark, admitting each on arrival put a prefill in nearly every decode step (1.40x over synchronous, 1.55x
  batched).
- **Synchronous** (``synchronous=True``, the baseline): turn by turn with barriers: every active trajectory's turn
  is decoded, then every environment steps (in parallel), and the next turn starts when the slowest is back.
- **Redundancy**: ``num_groups + extra_groups`` groups are launched (a group: one problem, ``group_size +
  redundancy`` trajectories, each with its own environment); a group is complete once ``group_size`` of its
  trajectories are done (the rest are aborted), and the rollout ends once ``num_groups`` groups are complete (the
  others are aborted): the first finishers are kept.
- **Bad environments**: one whose ``reset`` or ``step`` raises, whose reset returns anything but a text, or whose
  step returns anything but a :class:`zoo.envs.Step` of a text, a finite reward and a bool, ends its trajectory
  with reward 0 (``env_failures``, the first reasons in ``errors``); a reset or step that runs past
  ``env_timeout_s`` ends it the same way (``env_timeouts``; its daemon thread is abandoned and never keeps the
  process alive). An observation is cut to what fits the context before it is tokenized (a 9 MB answer costs a
  tokenization of what fits, not of 9 MB). Training goes on.

Seeds: turn ``t`` of trajectory ``m`` of the group launched at position ``g`` is row ``(g·M + m)·T + t`` of
:func:`zoo.generation.sampling.row_seeds` (``M`` trajectories a group, ``T = max_turns``), so a turn's tokens depend
on its context, the params and its seed only.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from zoo.envs import Environment, Step
from zoo.generation.engine import Request, Sample
from zoo.generation.sampling import SamplingParams, row_seeds


@dataclass
class Trajectory:
    group: int
    member: int
    environment: Environment
    context: list[int]
    prompt_length: int
    policy_mask: list[int] = field(default_factory=list)  # per token after the prompt: 1 the policy's, 0 observed
    logprobs: list[float] = field(default_factory=list)  # per token after the prompt (0 for observed ones)
    reward: float = 0.0
    turns: int = 0
    done: bool = False
    finish_reason: str = ""  # done | turns | context | error | timeout | aborted

    def sample(self, prompt_index: int) -> Sample:
        return Sample(
            prompt_index, self.context[self.prompt_length :], list(self.logprobs), self.finish_reason,
            mask=list(self.policy_mask),
        )  # fmt: skip


@dataclass
class AgentStats:
    turns: int = 0
    env_steps: int = 0
    env_seconds: float = 0.0  # summed over steps
    env_failures: int = 0
    env_timeouts: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures' reasons
    decode_steps: int = 0
    aborted_trajectories: int = 0
    seconds: float = 0.0


@dataclass
class AgentOutcome:
    groups: list[int]  # positions (launch order) of the complete groups kept, ascending
    trajectories: list[Trajectory]  # theirs, ``group_size`` a group, by group then member
    stats: AgentStats

    def samples(self) -> list[Sample]:
        return [t.sample(k) for k, g in enumerate(self.groups) for t in self.trajectories if t.group == g]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


@functools.cache
def _longest_token(tokenizer) -> int:
    """A bound on the characters one token decodes to: its longest vocabulary string (a byte-level or SentencePiece
    token's string is never shorter than its text)."""
    return max(1, *map(len, tokenizer.get_vocab()))


def _encode_upto(tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """The first ``limit`` tokens of ``text`` (0 or fewer: none), and whether it had more. Only a prefix that holds
    more than ``limit`` tokens is tokenized: no token is longer than the tokenizer's longest."""
    limit = max(limit, 0)
    span = (limit + 1) * _longest_token(tokenizer)
    ids = _encode(tokenizer, text[:span])
    return ids[:limit], len(ids) > limit


def check_step(result: Any) -> None:
    """A TypeError naming what is wrong unless ``result`` is a Step of a text, a finite number and a bool."""
    if not isinstance(result, Step):
        raise TypeError(f"step returned {result!r}, not a Step")
    if not isinstance(result.observation, str):
        raise TypeError(f"step returned an observation of {type(result.observation).__name__}, not a text")
    reward = result.reward
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
        raise TypeError(f"step returned the reward {reward!r}, not a finite reward (a number)")
    if not isinstance(result.done, bool):
        raise TypeError(f"step returned done={result.done!r}, not true or false")


def run_agent_rollout(
    engine,
    problems: Sequence[dict[str, Any]],
    make_environment: Callable[[dict[str, Any], int], Environment],
    params: SamplingParams,
    tokenizer,
    group_size: int,
    num_groups: int | None = None,
    redundancy: int = 0,
    extra_groups: int = 0,
    max_turns: int = 4,
    max_context: int = 512,
    synchronous: bool = False,
    env_timeout_s: float = 30.0,
) -> AgentOutcome:
    """Roll out ``group_size`` trajectories for each of ``problems`` (the launch; ``num_groups`` of them kept,
    default all but ``extra_groups``); ``make_environment(problem, seed)`` builds one trajectory's environment."""
    launched = len(problems)
    needed = num_groups if num_groups is not None else launched - extra_groups
    if not 1 <= needed <= launched:
        raise ValueError(f"{needed} groups cannot be kept from {launched} launched")
    members, start = group_size + redundancy, time.perf_counter()
    seeds = row_seeds(params.seed, launched * members * max_turns).tolist()
    stats, trajectories, broken = AgentStats(), [], []
    threads = _EnvironmentThreads()

    def failed(reason: str) -> None:
        stats.env_failures += 1
        if len(stats.errors) < 3:
            stats.errors.append(reason)

    resets: dict[Future, Trajectory] = {}
    for g, problem in enumerate(problems):
        for m in range(members):
            env = make_environment(problem, seeds[(g * members + m) * max_turns])
            trajectory = Trajectory(g, m, env, list(problem["prompt_ids"]), len(problem["prompt_ids"]))
            resets[threads.submit(env.reset, problem)] = trajectory
            trajectories.append(trajectory)
    done, late = wait(list(resets), timeout=env_timeout_s)  # the resets run side by side, each bounded
    for future, trajectory in resets.items():
        try:
            if future in late:
                stats.env_timeouts += 1
                raise TimeoutError(f"no answer within rollout.agent.env_timeout_s={env_timeout_s:g}")
            first, _ = future.result()
            if not isinstance(first, str):
                raise TypeError(f"reset returned {first!r}, not a text")
        except Exception as error:
            if future in done:
                failed(f"reset: {type(error).__name__}: {error}")
            broken.append(trajectory)
            continue
        observed, _ = _encode_upto(tokenizer, first, max_context - len(trajectory.context))
        trajectory.context += observed
        trajectory.policy_mask, trajectory.logprobs = [0] * len(observed), [0.0] * len(observed)
    finished_members = [0] * launched
    complete: list[int] = []
    stepping: dict[Future, Trajectory] = {}
    deadlines: dict[Future, float] = {}
    with engine.serving():
        core = engine.core(launched * members, max_context, params.max_new_tokens)

        def submit(t: Trajectory) -> None:
            room = min(params.max_new_tokens, max_context - len(t.context))
            if room < 1:
                return end(t, "context")
            seed = seeds[(t.group * members + t.member) * max_turns + t.turns]
            own = params if room == params.max_new_tokens else replace(params, max_new_tokens=room)
            core.submit(Request((t.group, t.member), list(t.context), own, seed))

        def end(t: Trajectory, reason: str) -> None:
            t.done, t.finish_reason = True, reason
            finished_members[t.group] += 1
            if finished_members[t.group] == group_size:
                complete.append(t.group)
                for other in trajectories:  # the group's slower members are not needed
                    if other.group == t.group and not other.done:
                        abort(other)

        def abort(t: Trajectory) -> None:
            core.abort((t.group, t.member))
            t.done, t.finish_reason = True, "aborted"
            stats.aborted_trajectories += 1

        def stepped(t: Trajectory, future: Future) -> None:
            stats.env_steps += 1
            if t.done:  # aborted while its environment stepped
                return
            try:
                result, seconds = future.result()
                stats.env_seconds += seconds
                check_step(result)
            except Exception as error:
                failed(f"step: {type(error).__name__}: {error}")
                t.reward = 0.0
                return end(t, "error")
            observed, full = _encode_upto(tokenizer, result.observation, max_context - len(t.context))
            t.context += observed
            t.policy_mask += [0] * len(observed)
            t.logprobs += [0.0] * len(observed)
            t.reward += result.reward
            if result.done:
                end(t, "done")
            elif full:
                end(t, "context")
            elif t.turns >= max_turns:
                end(t, "turns")
            elif not synchronous:
                arrived.append(t)

        def acted(t: Trajectory, tokens: list[int], logprobs: list[float]) -> None:
            t.context += tokens
            t.policy_mask += [1] * len(tokens)
            t.logprobs += logprobs
            t.turns += 1
            stats.turns += 1
            action = tokenizer.decode(tokens, skip_special_tokens=True)
            future = threads.submit(t.environment.step, action)
            stepping[future], deadlines[future] = t, time.monotonic() + env_timeout_s

        def settle(block: bool) -> None:
            """Take the environment steps that are back (with ``block``: wait for at least one, or for the first
            deadline); a step past its deadline ends its trajectory."""
            if not stepping:
                return
            timeout = max(0.0, min(deadlines.values()) - time.monotonic()) if block else 0
            done, _ = wait(list(stepping), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                deadlines.pop(future)
                stepped(stepping.pop(future), future)
            now = time.monotonic()
            for future in [f for f, deadline in deadlines.items() if deadline <= now]:
                t = stepping.pop(future)
                deadlines.pop(future)
                stats.env_steps += 1
                if not t.done:
                    stats.env_timeouts += 1
                    t.reward = 0.0
                    end(t, "timeout")

        def decode() -> None:
            """One engine step; the turns it finished go to their environments."""
            for f in core.step():
                t = trajectories[f.id[0] * members + f.id[1]]
                if not t.done and f.finish_reason != "abort":
                    acted(t, f.token_ids, f.logprobs)
            stats.decode_steps += 1

        arrived: list[Trajectory] = []  # back from their environments, to be admitted together
        together = max(1, len(trajectories) // 4)
        for t in broken:
            end(t, "error")
        for t in trajectories:
            if not t.done:
                submit(t)
        while len(complete) < needed:
            if synchronous:  # one turn for every active trajectory, then every environment step: two barriers
                while core.busy:
                    decode()
                while stepping:
                    settle(block=True)
                for t in trajectories:
                    if not t.done:
                        submit(t)
                if not core.busy and not stepping and len(complete) < needed:
                    break
                continue
            if arrived and (len(arrived) >= together or len(core.running) + len(core.waiting) < together):
                for t in arrived:
                    if not t.done:  # its group may have completed meanwhile
                        submit(t)
                arrived.clear()
            if core.busy:
                decode()
                settle(block=False)
            elif stepping:
                settle(block=True)
            elif arrived:
                continue
            else:
                break
        for t in trajectories:
            if not t.done:
                abort(t)
    threads.close()
    stats.seconds = time.perf_counter() - start
    kept_groups = sorted(complete[:needed])
    kept = []
    for g in kept_groups:
        done = [t for t in trajectories if t.group == g and t.finish_reason not in ("aborted",)]
        kept += sorted(done, key=lambda t: t.member)[:group_size]
    return AgentOutcome(kept_groups, kept, stats)


class _EnvironmentThreads:
    """Environment calls (resets, steps) on daemon threads (one per trajectory at most; started as needed, kept for
    the rollout): a call that never returns is abandoned at its deadline, its thread replaced, and it does not keep
    the process alive after training (a thread pool's threads would)."""

    def __init__(self) -> None:
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, call: Callable[[Any], Any], argument: Any) -> Future:
        """A future of ``(call(argument), seconds it took)``."""
        future: Future = Future()
        with self.lock:
            if self.idle == 0:
                threading.Thread(target=self._serve, name="zoo-env", daemon=True).start()
            else:
                self.idle -= 1
        self.work.put((future, call, argument))
        return future

    def _serve(self) -> None:
        while (item := self.work.get()) is not None:
            future, call, argument = item
            start = time.perf_counter()
            try:
                future.set_result((call(argument), time.perf_counter() - start))
            except Exception as error:
                future.set_exception(error)
            with self.lock:
                self.idle += 1

    def close(self) -> None:
        with self.lock:
            for _ in range(self.idle):
                self.work.put(None)
            self.idle = 0
