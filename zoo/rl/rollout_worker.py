"""A rollout worker of asynchronous RL (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3.1): generation that runs on
while the trainer trains, on its own copy of the policy, feeding a :class:`zoo.rl.sample_buffer.SampleBuffer`.

The worker's loop, one engine step at a time (the LLM proxy's loop: engine steps interleaved with commands):

1. **begin** prompts while the buffer's budget allows and the engine has rows for them: each prompt is ``n``
   requests (prompt replication) seeded by the sampling params of the version it begins under and its position
   there (:func:`zoo.rl.queue.group_requests`, as a synchronous step seeds them);
2. **step** the engine (continuous batching: a finished row is refilled at the next step);
3. a prompt whose ``n`` responses finished is **scored** at once on the reward runner's threads, and
   **committed** to the buffer as soon as its rewards are in, while generation goes on.

Commands from the trainer's thread: :meth:`~RolloutWorker.suspend` (returns once the loop is paused between two
engine steps), :meth:`~RolloutWorker.resume`, :meth:`~RolloutWorker.abort` (expired tickets: their requests leave
the engine), :meth:`~RolloutWorker.stop`. A weight push is suspend → :meth:`~RolloutWorker.set_policy` (the new
weights, their version and the sampling params prompts begun under it use) → resume. Requests in flight during a
push go on under the new weights (their later tokens are sampled by the newer policy, as in ROLL; their version
stays the one they began under, which bounds their staleness).

:meth:`~RolloutWorker.start` runs the loop in a daemon thread; :meth:`~RolloutWorker.run` runs it in the calling
thread (what a Ray actor's process does). An exception in the loop is kept (:attr:`error`), the buffer closed, and
the trainer's wait ends with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.engine_core import Finished
from zoo.rl.queue import group_requests
from zoo.rl.rewards import PendingRewards, RewardBatch
from zoo.rl.sample_buffer import SampleBuffer, Ticket
from zoo.sampling import SamplingParams

IDLE_WAIT_S = 0.002  # how long an idle loop sleeps before it looks for work again


@dataclass
class GroupResult:
    """What a worker commits for a prompt: its ``n`` responses in sample order and their rewards."""

    finished: list[Finished]
    rewards: RewardBatch
    generated_tokens: int  # the group's, aborted requests' included


@dataclass
class WorkerStats:
    """Cumulative; the trainer logs the differences."""

    engine_steps: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0  # stepping the engine
    idle_s: float = 0.0  # nothing to run: the budget is spent (waiting for the trainer) or all is being scored
    suspended_s: float = 0.0
    aborted_requests: int = 0
    committed: int = 0
    late_commits: int = 0  # groups finished after their ticket expired


@dataclass
class _Group:
    ticket: Ticket
    finished: list[Finished] = field(default_factory=list)
    pending: PendingRewards | None = None


class RolloutWorker:
    def __init__(
        self,
        engine,
        buffer: SampleBuffer,
        problems: Sequence[dict[str, Any]],
        n: int,
        score: Callable[[Sequence[Any], Sequence[str]], PendingRewards],
        max_running: int,
        max_length: int,
        max_new_tokens: int,
    ) -> None:
        self.engine, self.buffer, self.problems, self.n, self.score = engine, buffer, problems, n, score
        self.max_running, self.max_length, self.max_new_tokens = max_running, max_length, max_new_tokens
        self.params: dict[int, SamplingParams] = {}  # per version
        self.groups: dict[int, _Group] = {}  # ticket id → group, begun and not committed
        self.scoring: list[_Group] = []
        self.stats = WorkerStats()
        self.error: BaseException | None = None
        self._aborts: list[Ticket] = []
        self._control = threading.Condition()
        self._pause_requested = self._paused = self._stopping = False
        self._thread: threading.Thread | None = None
        self.core = None

    # -- commands (the trainer's thread) -----------------------------------------------------------------
    def set_policy(self, weights: Iterable[tuple[str, torch.Tensor]] | None, version: int, params: SamplingParams):
        """New weights (None: keep them) and the sampling params of prompts begun at ``version``; call while
        suspended or before the start."""
        if weights is not None:
            self.engine.load_weights(weights)
        self.params = {v: p for v, p in self.params.items() if v >= version - 64} | {version: params}

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="zoo-rollout-worker", daemon=True)
        self._thread.start()

    def suspend(self) -> None:
        with self._control:
            self._pause_requested = True
            while not self._paused and self._running():
                self._control.wait(0.1)

    def resume(self) -> None:
        with self._control:
            self._pause_requested = False
            self._control.notify_all()

    def abort(self, tickets: Iterable[Ticket]) -> None:
        with self._control:
            self._aborts.extend(tickets)

    def stop(self) -> None:
        with self._control:
            self._stopping = True
            self._control.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            with self.engine.serving():
                self.core = self.engine.core(self.max_running, self.max_length, self.max_new_tokens)
                while self._commands():
                    self._begin()
                    self._commit_scored()
                    if self.core.busy:
                        start = time.perf_counter()
                        finished = self.core.step()
                        self.stats.busy_s += time.perf_counter() - start
                        self.stats.engine_steps += 1
                        self._take(finished)
                    else:
                        start = time.perf_counter()
                        time.sleep(IDLE_WAIT_S)
                        self.stats.idle_s += time.perf_counter() - start
        except BaseException as error:  # kept for the trainer, which stops with it
            self.error = error
            self.buffer.close()
            raise

    def _commands(self) -> bool:
        """Apply aborts, pause while suspended; False once stopping."""
        with self._control:
            aborts, self._aborts = self._aborts, []
            if self._pause_requested:
                start = time.perf_counter()
                self._paused = True
                self._control.notify_all()
                while self._pause_requested and not self._stopping:
                    self._control.wait()
                self._paused = False
                self.stats.suspended_s += time.perf_counter() - start
            stopping = self._stopping
        for ticket in aborts:
            group = self.groups.pop(ticket.id, None)
            if group is None:
                continue
            for j in range(self.n):
                if (aborted := self.core.abort((ticket.id, j))) is not None:
                    self.stats.aborted_requests += 1
                    self.stats.generated_tokens += len(aborted.token_ids)
            if group in self.scoring:
                self.scoring.remove(group)
        return not stopping

    def _begin(self) -> None:
        core = self.core
        while len(core.running) + len(core.waiting) + self.n <= self.max_running:
            ticket = self.buffer.begin()
            if ticket is None:
                return
            problem = self.problems[ticket.problem]
            params = self.params[ticket.version]
            for request in group_requests(problem, ticket.id, ticket.position, self.n, params):
                core.submit(request)
            self.groups[ticket.id] = _Group(ticket)

    def _take(self, finished: list[Finished]) -> None:
        for result in sorted(finished, key=lambda f: f.id):
            group = self.groups.get(result.id[0])
            if group is None:
                continue
            group.finished.append(result)
            self.stats.generated_tokens += len(result.token_ids)
            if len(group.finished) == self.n:
                group.finished.sort(key=lambda f: f.id)
                texts = [self.engine.tokenizer.decode(f.token_ids, skip_special_tokens=True) for f in group.finished]
                group.pending = self.score([self.problems[group.ticket.problem]] * self.n, texts)
                self.scoring.append(group)

    def _commit_scored(self) -> None:
        waiting = []
        for group in self.scoring:
            if not group.pending.ready():
                waiting.append(group)
                continue
            del self.groups[group.ticket.id]
            tokens = sum(len(f.token_ids) for f in group.finished)
            if self.buffer.commit(group.ticket, GroupResult(group.finished, group.pending.wait(), tokens)):
                self.stats.committed += 1
            else:
                self.stats.late_commits += 1
        self.scoring = waiting
