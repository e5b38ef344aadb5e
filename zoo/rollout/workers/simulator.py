"""A discrete-event simulator of rollout and training (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3.2), run on
zoo's own :class:`zoo.rollout.workers.sample_buffer.SampleBuffer`, so that the staleness rule it simulates is the one
zoo trains with.

``K`` generation workers each produce one sample at a time (prompt replication: every sample is its own request)
with long-tailed generation times; a trainer takes ``N`` samples per step and trains ``E·N·μ_train`` seconds.
With asynchronous ratio α = 0 generation and training alternate (the synchronous loop, with queue scheduling: a
free worker takes the next sample at once); with α > 0 generation runs on while the trainer trains, up to α
versions ahead. A sample whose prompt expires is aborted and regenerated later (its time is wasted, and counted).

The paper's bounds, for ``Q`` samples produced with mean generation time ``μ_gen`` and maximum ``L_gen``:

- Proposition 1: the mean completion time per sample ``T̄ ≤ μ_gen/K + L_gen/Q`` (greedy list scheduling:
  Graham's bound); a synchronous step produces ``Q = N``, the asynchronous pipeline ``Q = (α + 1)·N`` per
  ``α + 1`` overlapping steps.
- Proposition 2 (``K`` devices of which a share β trains, ``β* = E·N·μ_train / (N·μ_gen + K·L_gen/(α+1) +
  E·N·μ_train)``): ``T_async ≤ (N/K)(μ_gen + E·μ_train) + L_gen/(α+1)`` per step, at most
  ``1 + K·L_gen / (N(μ_gen + E·μ_train))`` times faster than synchronous as α grows.

:func:`simulate` runs either; :func:`proposition_1` and :func:`proposition_2` compute the bounds from the times
the simulation drew.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from zoo.rollout.workers.sample_buffer import SampleBuffer


@dataclass
class LongTail:
    """Generation times ``min(lognormal(log median, σ), max)`` seconds (RollPacker: a P75 near 1k tokens and a
    maximum 25–32× the median)."""

    median: float = 1.0
    sigma: float = 1.0
    max: float = 30.0

    def draw(self, rng: random.Random) -> float:
        return min(rng.lognormvariate(math.log(self.median), self.sigma), self.max)


@dataclass
class SimulationResult:
    total_time: float
    steps: int
    samples_per_step: int
    generation_times: list[float]  # of the samples trained
    wasted_time: float  # generation time of samples aborted as expired
    staleness: Counter = field(default_factory=Counter)  # trained samples per staleness
    trainer_busy: float = 0.0
    step_generation_times: list[float] = field(default_factory=list)  # synchronous: each step's generation span

    @property
    def time_per_step(self) -> float:
        return self.total_time / self.steps

    @property
    def time_per_sample(self) -> float:
        return self.total_time / (self.steps * self.samples_per_step)


def simulate(
    workers: int,
    samples_per_step: int,
    steps: int,
    async_ratio: float,
    train_time_per_sample: float,
    lengths: LongTail,
    seed: int = 0,
) -> SimulationResult:
    """``steps`` training steps of ``samples_per_step`` samples each; generation times drawn per launched sample."""
    rng = random.Random(seed)
    next_problem = iter(range(10**12))
    buffer = SampleBuffer(samples_per_step, async_ratio, lambda count: [next(next_problem) for _ in range(count)])
    buffer.advance(0)
    running: dict[int, tuple[float, float, int]] = {}  # ticket id → (start, duration, worker)
    events: list[tuple[float, int, int]] = []  # (finish time, ticket id, worker)
    tickets = {}
    idle = list(range(workers))
    now, trainer_free_at, trained_steps, busy = 0.0, None, 0, 0.0
    result = SimulationResult(0.0, steps, samples_per_step, [], 0.0)
    step_started = 0.0
    while trained_steps < steps:
        while idle and (ticket := buffer.begin()) is not None:
            worker, duration = idle.pop(), lengths.draw(rng)
            running[ticket.id], tickets[ticket.id] = (now, duration, worker), ticket
            heapq.heappush(events, (now + duration, ticket.id, worker))
        if trainer_free_at is None and buffer.batch_ready():
            batch = buffer.ready_batch()
            for group in batch:
                result.generation_times.append(group.payload)
                result.staleness[group.staleness] += 1
            for ticket in buffer.expire():  # aborted: the worker is free now, its time wasted
                start, _, worker = running.pop(ticket.id)
                result.wasted_time += now - start
                idle.append(worker)
            if async_ratio == 0:
                result.step_generation_times.append(now - step_started)
            train = train_time_per_sample * samples_per_step
            trainer_free_at, busy = now + train, busy + train
            continue
        finish = events[0][0] if events else math.inf
        if trainer_free_at is not None and trainer_free_at <= finish:
            now, trainer_free_at = trainer_free_at, None
            trained_steps += 1
            step_started = now
            buffer.advance(buffer.version + 1)  # the new weights are pushed
            continue
        if not events:
            raise RuntimeError(f"the simulation stalled: {buffer.describe()}")
        now, ticket_id, worker = heapq.heappop(events)
        if ticket_id in running:  # not aborted meanwhile
            start, duration, _ = running.pop(ticket_id)
            buffer.commit(tickets[ticket_id], duration)
            idle.append(worker)
    result.total_time, result.trainer_busy = now, busy
    return result


def proposition_1(mean_generation: float, max_generation: float, workers: int, samples: int) -> float:
    """The bound on the mean completion time per sample when ``samples`` are generated by ``workers``."""
    return mean_generation / workers + max_generation / samples


@dataclass
class Proposition2:
    train_share: float  # β*
    time_per_step: float  # the bound on T_async
    max_speedup: float  # α → ∞


def proposition_2(
    mean_generation: float,
    max_generation: float,
    mean_train: float,
    devices: int,
    samples_per_step: int,
    async_ratio: float,
    epochs: int = 1,
) -> Proposition2:
    N, K, E, a = samples_per_step, devices, epochs, async_ratio
    train = E * N * mean_train
    beta = train / (N * mean_generation + K * max_generation / (a + 1) + train)
    bound = N / K * (mean_generation + E * mean_train) + max_generation / (a + 1)
    speedup = 1 + K * max_generation / (N * (mean_generation + E * mean_train))
    return Proposition2(beta, bound, speedup)
