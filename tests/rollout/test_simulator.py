"""The rollout/training simulator (zoo/rollout/workers/simulator.py): α = 0 is the synchronous schedule computed
independently, Proposition 1 holds for every synchronous step, staleness stays within α, and the speedups move as
the paper says: up with α, up with the tail's weight, within Proposition 2's bound."""

import heapq
import math
import random
import statistics

import pytest

from zoo.rollout.workers.simulator import LongTail, proposition_1, proposition_2, simulate


def _synchronous_total(workers, N, steps, train_per_sample, lengths, seed):
    """Each step: the N samples' generation times in draw order, each on the first free worker, then training."""
    rng, total = random.Random(seed), 0.0
    for _ in range(steps):
        free = [0.0] * workers
        for _ in range(N):
            heapq.heappush(free, heapq.heappop(free) + lengths.draw(rng))
        total += max(free) + N * train_per_sample
    return total


@pytest.mark.parametrize("workers, N", [(1, 4), (4, 16), (8, 5), (16, 64)])
def test_alpha_zero_is_the_synchronous_schedule_and_meets_proposition_1(workers, N):
    lengths = LongTail(1.0, 1.2, 30.0)
    result = simulate(workers, N, 6, 0, 0.01, lengths, seed=3)
    expected = _synchronous_total(workers, N, 6, 0.01, lengths, seed=3)
    assert result.total_time == pytest.approx(expected, rel=1e-12)
    assert set(result.staleness) == {0}
    for step, span in enumerate(result.step_generation_times):
        times = result.generation_times[step * N : (step + 1) * N]
        bound = proposition_1(statistics.mean(times), max(times), workers, N)
        assert span / N <= bound + 1e-12


@pytest.mark.parametrize("alpha", [0.5, 1, 1.5, 2, 4])
def test_staleness_stays_within_alpha(alpha):
    result = simulate(8, 16, 30, alpha, 0.02, LongTail(1.0, 1.5, 40.0), seed=1)
    assert max(result.staleness) <= math.ceil(alpha)
    trained = sum(result.staleness.values())
    assert trained == 30 * 16 and sum(s * c for s, c in result.staleness.items()) / trained <= alpha


def test_speedup_grows_with_alpha_and_with_the_tail_and_stays_within_proposition_2():
    K, N, steps, train = 16, 64, 30, 0.05

    def speedups(sigma):
        lengths = LongTail(1.0, sigma, 30.0)
        sync = simulate(K, N, steps, 0, train / K, lengths, seed=2)
        mean, longest = statistics.mean(sync.generation_times), max(sync.generation_times)
        out = []
        for alpha in (1, 2, 4):
            bound = proposition_2(mean, longest, train, K, N, alpha)
            trainers = max(1, round(bound.train_share * K))
            run = simulate(K - trainers, N, steps, alpha, train / trainers, lengths, seed=2)
            assert run.time_per_step <= bound.time_per_step
            assert sync.time_per_step / run.time_per_step <= bound.max_speedup
            per_sample = proposition_1(mean, longest, K - trainers, (alpha + 1) * N)
            assert run.time_per_sample <= per_sample
            out.append(sync.time_per_step / run.time_per_step)
        return out

    light, heavy = speedups(0.5), speedups(1.5)
    at_1, at_2, at_4 = heavy
    assert at_1 > 1.2, f"α = 1 gains nothing on a heavy tail: {at_1:.2f}x"
    assert at_2 > at_1 and at_4 > at_2, f"speedup does not grow with α: {heavy}"
    for h, lo in zip(heavy, light, strict=True):
        assert h > lo, f"a heavier tail should gain more: {heavy} vs {light}"
