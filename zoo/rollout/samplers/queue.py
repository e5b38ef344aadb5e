"""Queue scheduling of a rollout step (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3: fine-grained parallelism
inside a rollout), on the native engine's request-level core (``zoo.generation.core``).

Every launched prompt is an independent task, and **replicated**: a prompt that needs n responses is n requests,
which the engine's continuous batching schedules one by one (a finished request's row is refilled at once). A
prompt's group is **complete** once ``complete_at`` of its responses have finished (its other requests are
aborted then); its rewards start at once on the reward runner's worker threads while generation goes on. The
step stops as soon as ``needed`` groups are complete (counting, with **dynamic filtering**, only groups whose
rewards are not all equal: DAPO), and aborts the rest. **Redundant prompts** are simply more launched prompts than
``needed``. With filtering, every group filtered out launches one more prompt, up to ``max_launched`` prompts a
step; past that limit the step trains filtered groups to fill up (their GRPO advantages are zero).

What the step does not train goes back to its planner, in launch order: :class:`QueuePlanner` below for plain
queue scheduling, the tail-batching queue under ``sampler=tail_batching``. A returned prompt is **protected**
when it is launched again: it is never aborted, and the step does not end before its group is complete, so it is
trained (or filtered out) then. Aborting favours short answers; protection bounds that bias to one step.

Determinism (a resumed run continues exactly): a request's tokens depend on its prompt, params and seed only,
and every decision is taken at a point fixed by generation alone. Without filtering a group counts at the step
it completes (rewards are only awaited at the end). With filtering its rewards decide, so they are awaited
``DECISION_LAG`` engine steps after it completed (they have that long to run beside generation), or at once when
the engine has nothing left to run.

Choices where the paper is silent: launched prompts take their seeds from the step's seed and their launch
position (request j of position k is row k·n + j of ``zoo.generation.sampling.row_seeds``); the groups trained are the
protected ones and then the others in completion order (ties: launch order); complete groups beyond ``needed``
are returned like unfinished ones (their samples are not kept: a later step trains them on-policy).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import lightning as L
import torch

from zoo.errors import require_int
from zoo.generation.engine import Finished, GenerationResult, Request, Sample
from zoo.generation.sampling import SamplingParams, row_seeds
from zoo.rl.rewards import PendingRewards, RewardBatch
from zoo.rl.rollout import Round
from zoo.rollout.samplers.base import Sampler
from zoo.text.loader import PromptStream

DECISION_LAG = 8  # engine steps between a group's completion and its filtering decision

Scorer = Callable[[Sequence[Any], Sequence[str]], PendingRewards]  # (the group's problems, its texts)


@dataclass(frozen=True)
class QueueOptions:
    """``rollout.schedule=queue``'s settings (the rollout config's keys of the same names)."""

    extra_prompts: int = 0  # prompts launched beyond the step's batch (redundant prompts)
    filter_groups: bool = False  # groups whose rewards are all equal do not count (DAPO)
    max_launched_prompts: int | None = None  # with filter_groups: at most this many a step (None: 4x the launch)
    max_running: int | None = None  # the engine's rows (None: every launched request at once)

    def __post_init__(self) -> None:
        require_int("rollout.extra_prompts", self.extra_prompts, 0)
        if self.max_launched_prompts is not None:
            require_int("rollout.max_launched_prompts", self.max_launched_prompts, 1)
        if self.max_running is not None:
            require_int("rollout.max_running", self.max_running, 1)


@dataclass
class QueueStats:
    launched_prompts: int = 0
    aborted_requests: int = 0
    filtered_groups: int = 0
    filled_with_filtered: int = 0  # filtered groups trained because the launch limit was reached
    decode_steps: int = 0
    prefills: int = 0
    occupancy: float = 0.0  # mean running rows / pool rows over the decode steps
    waiting: float = 0.0  # mean requests waiting for a row, per decode step
    reward_latency_s: list[float] = field(default_factory=list)  # a group's completion → its scores, per group
    trained_lengths: list[int] = field(default_factory=list)
    aborted_lengths: list[int] = field(default_factory=list)  # tokens an aborted request had made
    generated_tokens: int = 0


@dataclass
class QueueOutcome:
    launched: list[int]  # problem index of every launched prompt, in launch order (positions index this)
    trained: list[int]  # positions trained, ascending
    samples: list[Sample]  # the trained groups' samples, grouped by position (prompt_index = position)
    rewards: RewardBatch  # aligned with samples
    filtered: list[int]  # positions filtered out (consumed, not trained)
    returned: list[int]  # positions neither trained nor filtered out, in launch order
    stats: QueueStats


@dataclass
class _Group:
    position: int
    protected: bool
    finished: list[Finished] = field(default_factory=list)
    completed_at: int | None = None  # engine step
    completed_time: float = 0.0
    pending: PendingRewards | None = None
    rewards: RewardBatch | None = None


def run_queue_round(
    engine,
    problems: Sequence[dict[str, Any]],
    launch: Sequence[int],
    protected: Sequence[bool],
    n: int,
    complete_at: int,
    needed: int,
    params: SamplingParams,
    score: Scorer,
    tokenizer,
    more: Callable[[], int] | None = None,
    filter_groups: bool = False,
    max_launched: int | None = None,
    max_running: int | None = None,
) -> QueueOutcome:
    """One step of queue scheduling with a :class:`zoo.generation.native.NativeEngine`; see the module docstring.

    ``launch`` are problem indices (each with ``prompt_ids``, and optionally its own ``max_new_tokens``, which
    caps its responses below ``params``'); ``more()`` returns the next problem index for a filtered group's
    replacement. The pool has ``max_running`` rows (default: every launched request at once)."""
    if not 1 <= complete_at <= n:
        raise ValueError(f"complete_at={complete_at} must lie in [1, n={n}]")
    launched, groups = list(launch), [_Group(k, bool(p)) for k, p in enumerate(protected)]
    limit = max(max_launched if max_launched is not None else 4 * len(launched), len(launched))
    width = max(len(p["prompt_ids"]) for p in problems)
    stats = QueueStats()
    with engine.serving():
        core = engine.core(max_running or len(launched) * n, width + params.max_new_tokens, params.max_new_tokens)

        def submit(position: int) -> None:
            for request in group_requests(problems[launched[position]], position, position, n, params):
                core.submit(request)
            stats.launched_prompts += 1

        for position in range(len(launched)):
            submit(position)
        accepted: list[int] = []
        filtered: list[int] = []
        deciding: deque[_Group] = deque()  # complete groups awaiting their filtering decision, in order
        step = 0

        def decide(group: _Group) -> None:
            group.rewards = group.pending.wait()
            stats.reward_latency_s.append(group.pending.finished - group.completed_time)
            scores = group.rewards.scores
            if filter_groups and bool((scores == scores[0]).all()):
                filtered.append(group.position)
                stats.filtered_groups += 1
                if more is not None and len(launched) < limit and not enough():
                    launched.append(more())
                    groups.append(_Group(len(launched) - 1, False))
                    submit(len(launched) - 1)
            else:
                accepted.append(group.position)

        def enough() -> bool:
            done = set(accepted) | set(filtered)
            return len(accepted) >= needed and all(g.position in done for g in groups if g.protected)

        while True:
            if core.busy:
                stats.waiting += len(core.waiting)
                finished = core.step()
                step += 1
            else:
                finished = []
            for result in sorted(finished, key=lambda f: f.id):
                group = groups[result.id[0]]
                if len(group.finished) >= complete_at:
                    continue
                group.finished.append(result)
                if len(group.finished) == complete_at:  # complete: abort the surplus, score at once
                    group.completed_at, group.completed_time = step, time.monotonic()
                    for j in range(n):
                        if (aborted := core.abort((group.position, j))) is not None:
                            stats.aborted_requests += 1
                            stats.aborted_lengths.append(len(aborted.token_ids))
                    group.finished.sort(key=lambda f: f.id)  # sample order: the rewards line up with the samples
                    texts = [tokenizer.decode(f.token_ids, skip_special_tokens=True) for f in group.finished]
                    group.pending = score([problems[launched[group.position]]] * complete_at, texts)
                    if filter_groups:
                        deciding.append(group)
                    else:
                        accepted.append(group.position)
            while deciding and (deciding[0].completed_at + DECISION_LAG <= step or not core.busy):
                decide(deciding.popleft())
            if enough() or not (core.busy or deciding):
                break
        stats.decode_steps, stats.prefills = core.decode_steps, core.prefills
        stats.occupancy = core.occupancy / max(core.decode_steps, 1)
        stats.waiting /= max(step, 1)
        for group in groups:  # abort what still runs or waits
            for j in range(n):
                if (aborted := core.abort((group.position, j))) is not None:
                    stats.aborted_requests += 1
                    stats.aborted_lengths.append(len(aborted.token_ids))
    trained = [k for k in accepted if groups[k].protected]
    trained += [k for k in accepted if not groups[k].protected][: max(needed - len(trained), 0)]
    if len(trained) < needed and filter_groups:  # the launch limit left too few informative groups
        fill = [k for k in filtered if not groups[k].protected][: needed - len(trained)]
        stats.filled_with_filtered = len(fill)
        filtered = [k for k in filtered if k not in fill]
        trained += fill
    trained.sort()
    consumed = set(trained) | set(filtered)
    returned = [k for k in range(len(launched)) if k not in consumed]
    samples, rewards = [], []
    for k in trained:
        group = groups[k]
        if group.rewards is None:  # without filtering, rewards are awaited only now
            group.rewards = group.pending.wait()
            stats.reward_latency_s.append(group.pending.finished - group.completed_time)
        rewards.append(group.rewards)
        for f in group.finished:
            samples.append(Sample(k, f.token_ids, f.logprobs, f.finish_reason))
            stats.trained_lengths.append(len(f.token_ids))
    stats.generated_tokens = sum(len(f.token_ids) for g in groups for f in g.finished) + sum(stats.aborted_lengths)
    return QueueOutcome(launched, trained, samples, concatenate_rewards(rewards), filtered, returned, stats)


def group_requests(problem: dict[str, Any], key: Any, position: int, n: int, params: SamplingParams) -> list[Request]:
    """The ``n`` requests of a prompt launched at ``position`` of a step seeded by ``params.seed``: request ``(key,
    j)`` is seeded as row ``position·n + j`` of :func:`zoo.generation.sampling.row_seeds`; a problem's own
    ``max_new_tokens`` caps its responses below ``params``'."""
    seeds = row_seeds(params.seed, (position + 1) * n)[position * n :].tolist()
    budget = min(problem.get("max_new_tokens", params.max_new_tokens), params.max_new_tokens)
    own = params if budget == params.max_new_tokens else replace(params, max_new_tokens=budget)
    return [Request((key, j), list(problem["prompt_ids"]), own, seeds[j]) for j in range(n)]


def concatenate_rewards(batches: list[RewardBatch]) -> RewardBatch:
    if not batches:
        return RewardBatch(torch.zeros(0))
    names = dict.fromkeys(name for b in batches for name in b.parts)
    parts = {name: torch.cat([b.parts.get(name, torch.zeros(len(b.scores))) for b in batches]) for name in names}
    errors = [e for b in batches for e in b.errors][:3]
    return RewardBatch(
        torch.cat([b.scores for b in batches]),
        parts,
        sum(b.failures for b in batches),
        sum(b.timeouts for b in batches),
        errors,
    )


@dataclass
class QueuePlanner:
    """Which prompts a queue-scheduled step launches (plain queue scheduling; tail batching plans its own).
    ``returned`` holds prompts launched before and not trained; they are launched first, protected. When they
    fill a step alone they run without redundant prompts."""

    prompts_per_step: int
    extra_prompts: int = 0
    returned: list[int] = field(default_factory=list)

    def plan(self, fresh: Callable[[int, int], list[int]]) -> tuple[list[int], list[bool]]:
        p0 = self.prompts_per_step
        if len(self.returned) >= p0:
            prompts, self.returned = self.returned[:p0], self.returned[p0:]
            return prompts, [True] * p0
        prompts, self.returned = self.returned, []
        count = p0 + self.extra_prompts - len(prompts)
        new = fresh(count, count)
        return prompts + new, [True] * len(prompts) + [False] * len(new)

    def finish(self, outcome: QueueOutcome) -> None:
        self.returned.extend(outcome.launched[k] for k in outcome.returned)

    def state_dict(self) -> dict[str, Any]:
        return {"returned": list(self.returned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returned = list(state["returned"])


def queue_round(
    callback,
    module: L.LightningModule,
    problems: Sequence[dict],
    launch: Sequence[int],
    protected: Sequence[bool],
    n: int,
    complete_at: int,
    needed: int,
    more: Callable[[], int] | None = None,
) -> tuple[Round, QueueOutcome]:
    """One queue-scheduled step (:func:`run_queue_round`) on the rollout ``callback``'s engine, with its queue
    options and the module's sampling params and scorer: the :class:`Round` it trains (its rewards already
    computed) and the outcome; logged under ``rollout/`` and ``queue/``."""
    options: QueueOptions = callback.queue_options
    start = time.perf_counter()
    outcome = run_queue_round(
        callback.engine,
        problems,
        launch,
        protected,
        n,
        complete_at,
        needed,
        module.sampling_params(),
        module.submit_scores,
        callback.engine.tokenizer,
        more=more,
        filter_groups=options.filter_groups,
        max_launched=options.max_launched_prompts,
        max_running=options.max_running,
    )
    seconds = time.perf_counter() - start
    result = GenerationResult(outcome.samples, decode_steps=outcome.stats.decode_steps)
    result.generated_tokens = outcome.stats.generated_tokens
    launched = [problems[i] for i in outcome.launched]
    step = Round.from_generation(launched, result, callback.engine.tokenizer, module.device)
    step.rewards = outcome.rewards
    callback.log_generation(module, result, seconds, "rollout")
    stats = outcome.stats

    def mean(values) -> float:
        return sum(values) / len(values) if values else 0.0

    module.log_dict(
        {
            "queue/occupancy": stats.occupancy,
            "queue/waiting": stats.waiting,
            "queue/aborted_requests": float(stats.aborted_requests),
            "queue/filtered_groups": float(stats.filtered_groups),
            "queue/filled_with_filtered": float(stats.filled_with_filtered),
            "queue/launched_prompts": float(stats.launched_prompts),
            "queue/reward_latency_s": mean(stats.reward_latency_s),
            "queue/trained_length_mean": mean(stats.trained_lengths),
            "queue/aborted_length_mean": mean(stats.aborted_lengths),
        }
    )
    return step, outcome


class QueueSampler(Sampler):
    """Plain queue scheduling's choice of prompts (no tail batching): the training prompts in the loader's seeded
    order (:class:`zoo.text.loader.PromptStream`; the training loader then only paces the steps) through a
    :class:`QueuePlanner`, whose returned prompts come first."""

    def __init__(self, callback, trainer: L.Trainer) -> None:
        data = trainer.datamodule
        self.callback, self.problems = callback, data.train_set
        self.planner = QueuePlanner(data.hparams.batch_size, callback.queue_options.extra_prompts)
        self.stream = PromptStream(len(self.problems), data.hparams.seed, trainer.global_rank, trainer.world_size)

    def next_round(self, module: L.LightningModule) -> Round:
        prompts, protected = self.planner.plan(self.stream.take)
        n = module.rollout_config.n
        step, outcome = queue_round(
            self.callback,
            module,
            self.problems,
            prompts,
            protected,
            n,
            n,
            self.planner.prompts_per_step,
            more=lambda: self.stream.take(1, 1)[0],
        )
        self.planner.finish(outcome)
        module.log("queue/returned_prompts", float(len(self.planner.returned)))
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"planner": self.planner.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planner.load_state_dict(state["planner"])
        self.stream.load_state_dict(state["stream"])
