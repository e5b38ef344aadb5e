"""The versioned sample buffer (zoo/rollout/workers/sample_buffer.py) on random schedules: staleness never above ⌈α⌉
(and the batch's mean never above α), no deadlock, nothing lost and nothing trained twice, ROLL's first-step budget, α =
0 is the synchronous schedule, and a restored buffer gives back every prompt not trained."""

import math
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.rollout.workers.sample_buffer import BufferClosed, SampleBuffer


class _Stream:
    """Fresh prompts 0, 1, 2, ... (each drawn once), recording what was drawn."""

    def __init__(self):
        self.drawn = []

    def __call__(self, count):
        fresh = list(range(len(self.drawn), len(self.drawn) + count))
        self.drawn += fresh
        return fresh


def _simulate(N, alpha, steps, rng, abort_rate=0.05, wait=True):
    """One worker and one trainer interleaved at random, single-threaded: the trainer takes a batch whenever one
    is ready (and sometimes dawdles), the worker begins, finishes or gives up prompts. Returns the batches."""
    stream = _Stream()
    buffer = SampleBuffer(N, alpha, stream, wait_for_stragglers=wait)
    buffer.advance(0)
    batches, trained = [], []
    while len(batches) < steps:
        progress = False
        if rng.random() < 0.5:
            if (batch := buffer.ready_batch()) is not None:
                batches.append((buffer.version, batch))
                trained += [g.ticket.problem for g in batch]
                for ticket in buffer.expire():  # the worker learns late: its commit is refused
                    assert ticket.id not in buffer.running and buffer.commit(ticket, None) is False
                    assert ticket.problem in buffer.returned
                buffer.advance(buffer.version + 1)
                progress = True
        if rng.random() < 0.6 and buffer.begin() is not None:
            progress = True
        if buffer.running and rng.random() < 0.7:
            ticket = rng.choice(list(buffer.running.values()))
            if rng.random() < abort_rate:
                buffer.abort(ticket)
            else:
                assert buffer.commit(ticket, payload=ticket.problem)
            progress = True
        if not progress:  # nothing happened this tick: something must be able to happen on the next
            assert buffer.running or buffer.batch_ready() or buffer.begin() is not None, buffer.describe()
    return buffer, stream, batches, trained


@settings(max_examples=200, deadline=None)
@given(
    N=st.integers(1, 8),
    alpha=st.sampled_from([0, 0.5, 1, 1.5, 2, 2.25, 3, 4]),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**20),
    wait=st.booleans(),
)
def test_staleness_is_bounded_and_every_prompt_is_trained_once_or_still_waits(N, alpha, steps, seed, wait):
    buffer, stream, batches, trained = _simulate(N, alpha, steps, random.Random(seed), wait=wait)
    window = math.ceil(alpha)
    for version, batch in batches:
        assert len(batch) == N
        staleness = [g.staleness for g in batch]
        assert all(s == version - g.ticket.version for s, g in zip(staleness, batch, strict=True))
        assert max(staleness) <= window and min(staleness) >= 0
        if alpha % 1:
            assert staleness.count(window) <= int(N * (alpha % 1))
        assert sum(staleness) / N <= alpha + 1e-9
    assert len(trained) == len(set(trained))  # never twice
    waiting = [t.problem for t in buffer.running.values()]
    waiting += [g.ticket.problem for groups in buffer.finished.values() for g in groups]
    assert sorted(trained + waiting + list(buffer.returned)) == sorted(stream.drawn)  # nothing lost


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 6), steps=st.integers(1, 8), seed=st.integers(0, 2**20))
def test_alpha_zero_is_the_synchronous_schedule(N, steps, seed):
    """Each version begins exactly its batch's N prompts, in stream order, and trains them, in that order."""
    buffer, stream, batches, trained = _simulate(N, 0, steps, random.Random(seed), abort_rate=0.0)
    for version, batch in batches:
        assert [g.ticket.version for g in batch] == [version] * N
        assert [g.ticket.position for g in batch] == list(range(N))
    assert trained == stream.drawn[: len(trained)] == list(range(N * steps))


@pytest.mark.parametrize("N, alpha, expected", [(8, 0, 8), (8, 1, 16), (8, 0.5, 12), (5, 0.3, 7), (4, 2, 12)])
def test_the_first_step_may_begin_n_plus_ceil_alpha_n_prompts(N, alpha, expected):
    buffer = SampleBuffer(N, alpha, _Stream())
    assert buffer.begin() is None  # before the first advance nothing begins
    buffer.advance(0)
    tickets = []
    while (ticket := buffer.begin()) is not None:
        tickets.append(ticket)
    assert len(tickets) == expected
    buffer.advance(1)  # one more step: N more
    assert sum(buffer.begin() is not None for _ in range(100)) == N


def _second_step(wait):
    """N = 2, α = 1: version 0 began four prompts and trained two; version 1 has begun two. The buffer, version
    0's tickets and version 1's."""
    buffer = SampleBuffer(2, 1, _Stream(), wait_for_stragglers=wait)
    buffer.advance(0)
    t = [buffer.begin() for _ in range(4)]
    buffer.commit(t[0], None), buffer.commit(t[1], None)
    buffer.get_batch(timeout=1)
    buffer.advance(1)
    return buffer, t, [buffer.begin() for _ in range(2)]


def test_an_older_versions_share_waits_for_its_running_prompts():
    buffer, t, newer = _second_step(wait=True)
    for ticket in newer:
        buffer.commit(ticket, None)
    assert buffer.ready_batch() is None  # version 0 still runs two prompts that would expire unused
    buffer.commit(t[2], None)
    assert buffer.ready_batch() is None
    buffer.commit(t[3], None)
    assert [g.ticket for g in buffer.ready_batch()] == [t[2], t[3]]


def test_without_waiting_a_batch_takes_what_has_finished_and_the_straggler_expires():
    buffer, t, newer = _second_step(wait=False)
    buffer.commit(t[2], None), buffer.commit(newer[0], None)
    assert [g.ticket for g in buffer.ready_batch()] == [t[2], newer[0]]  # t[3] still runs: not waited for
    assert buffer.expire() == [t[3]]  # too old for version 2: aborted, begun again first
    buffer.advance(2)
    again = buffer.begin()
    assert again.problem == t[3].problem and again.protected
    buffer.commit(newer[1], None)
    buffer.commit(buffer.begin(), None)
    batch = buffer.get_batch(timeout=1)  # version 2's batch: `again` still runs, and is not too old yet
    assert again not in [g.ticket for g in batch]
    assert buffer.expire() == []
    buffer.advance(3)
    for ticket in (buffer.begin(), buffer.begin()):
        buffer.commit(ticket, None)
    assert buffer.ready_batch() is None  # enough has finished, but the protected prompt would expire: wait
    buffer.commit(again, None)
    batch = buffer.ready_batch()
    assert batch[0].ticket == again and batch[0].staleness == 1  # taken first


def test_the_restored_buffer_gives_back_every_prompt_not_trained():
    buffer, stream, _, trained = _simulate(3, 2, 5, random.Random(7))
    state = buffer.state_dict()
    restored = SampleBuffer(3, 2, stream)
    restored.load_state_dict(state)
    assert restored.version == buffer.version
    assert sorted(trained + state["returned"]) == sorted(stream.drawn)
    again = [ticket.problem for ticket in iter(restored.begin, None)]
    assert again[: len(state["returned"])] == state["returned"]  # first in line
    assert len(again) == restored.budget - state["committed"]


def test_threads_a_waiting_trainer_wakes_on_commit_and_on_close():
    buffer = SampleBuffer(1, 0, _Stream())
    buffer.advance(0)
    ticket = buffer.begin()
    threading.Timer(0.05, buffer.commit, (ticket, "group")).start()
    assert buffer.get_batch(timeout=5)[0].payload == "group"
    buffer.advance(1)
    threading.Timer(0.05, buffer.close).start()
    with pytest.raises(BufferClosed):
        buffer.get_batch(timeout=5)
