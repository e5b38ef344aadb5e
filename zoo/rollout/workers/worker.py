"""A rollout worker of asynchronous RL (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3.1): generation that runs on
while the trainer trains, feeding a :class:`zoo.rollout.workers.sample_buffer.SampleBuffer`.

A worker is a *driver* (a daemon thread of the trainer's process) and an *engine server*
(:mod:`zoo.rollout.workers.engine_server`: a thread, a process or a Ray actor with its own copy of the policy, stepping
its engine freely). The driver's loop:

1. **begin** prompts while the buffer's budget allows and the server has rows for them: each prompt is ``n``
   requests (prompt replication) seeded by the sampling params of the version it begins under and its position
   there (:func:`zoo.rollout.samplers.queue.group_requests`, as a synchronous step seeds them), sent in one message;
2. **receive** the requests that finished;
3. a prompt whose ``n`` responses finished is **scored** at once on the reward runner's threads, and
   **committed** to the buffer as soon as its rewards are in, while generation goes on.

Commands from the trainer's thread: :meth:`~RolloutWorker.suspend` (returns once the driver is paused between two
loop turns), :meth:`~RolloutWorker.resume`, :meth:`~RolloutWorker.abort` (expired tickets: their requests leave
the engine), :meth:`~RolloutWorker.stop`. A weight push is suspend → :meth:`~RolloutWorker.set_policy` (the new
weights, their version and the sampling params prompts begun under it use) → resume. The server applies commands
in order: the requests begun after a push run on the new weights; those in flight go on under them (their later
tokens are sampled by the newer policy, as in ROLL; their version stays the one they began under, which bounds
their staleness).

An exception in the driver or the server is kept (:attr:`error`), the buffer closed, and the trainer's wait ends
with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.generation.engine import Finished
from zoo.generation.sampling import SamplingParams
from zoo.rl.rewards import PendingRewards, RewardBatch
from zoo.rollout.samplers.queue import group_requests
from zoo.rollout.workers.engine_server import ServerChannel
from zoo.rollout.workers.sample_buffer import SampleBuffer, Ticket

POLL_S = 0.002  # how long the driver waits for finished requests before it looks at the buffer again


@dataclass
class GroupResult:
    """What a worker commits for a prompt: its ``n`` responses in sample order and their rewards."""

    finished: list[Finished]
    rewards: RewardBatch
    generated_tokens: int


@dataclass
class WorkerStats:
    """Cumulative; the trainer logs the differences."""

    generated_tokens: int = 0  # aborted requests' included
    busy_s: float = 0.0  # the server stepping its engine
    idle_s: float = 0.0  # nothing in flight: the budget is spent (waiting for the trainer)
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
        server: ServerChannel,
        buffer: SampleBuffer,
        problems: Sequence[dict[str, Any]],
        n: int,
        score: Callable[[Sequence[Any], Sequence[str]], PendingRewards],
        tokenizer,
        max_running: int,
    ) -> None:
        self.server, self.buffer, self.problems, self.n, self.score = server, buffer, problems, n, score
        self.tokenizer, self.max_running = tokenizer, max_running
        self.params: dict[int, SamplingParams] = {}  # per version
        self.groups: dict[int, _Group] = {}  # ticket id → group, begun and not committed
        self.in_flight = 0  # requests sent and not finished
        self.scoring: list[_Group] = []
        self.stats = WorkerStats()
        self.error: BaseException | None = None
        self._aborts: list[Ticket] = []
        self._control = threading.Condition()
        self._pause_requested = self._paused = self._stopping = False
        self._thread: threading.Thread | None = None

    # -- commands (the trainer's thread) -----------------------------------------------------------------
    def set_policy(self, weights: Iterable[tuple[str, torch.Tensor]] | None, version: int, params: SamplingParams):
        """New weights (None: keep them) and the sampling params of prompts begun at ``version``; call while
        suspended or before the start."""
        if weights is not None:
            self.server.load_weights(weights)
        self.params = {v: p for v, p in self.params.items() if v >= version - 64} | {version: params}

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="zoo-rollout-driver", daemon=True)
        self._thread.start()

    def suspend(self) -> None:
        with self._control:
            self._pause_requested = True
            while not self._paused and self._thread is not None and self._thread.is_alive():
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
        if self._thread is not None:
            self._thread.join()
        self.server.stop()

    # -- the driver's loop -------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while self._commands():
                self._begin()
                self._commit_scored()
                start = time.perf_counter()
                finished = self.server.receive(POLL_S)
                if not self.in_flight and not self.scoring:
                    self.stats.idle_s += time.perf_counter() - start
                self._take(finished)
            self.stats.busy_s = self.server.busy_s
        except BaseException as error:  # kept for the trainer, which stops with it
            self.error = error
            self.buffer.close()

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
        ids = []
        for ticket in aborts:
            group = self.groups.pop(ticket.id, None)
            if group is None:
                continue
            running = self.n - len(group.finished)
            ids += [(ticket.id, j) for j in range(self.n)]
            self.in_flight -= running
            self.stats.aborted_requests += running
            if group in self.scoring:
                self.scoring.remove(group)
        self.server.abort(ids)
        self.stats.busy_s = self.server.busy_s
        return not stopping

    def _begin(self) -> None:
        requests = []
        while self.in_flight + len(requests) + self.n <= self.max_running:
            ticket = self.buffer.begin()
            if ticket is None:
                break
            problem = self.problems[ticket.problem]
            requests += group_requests(problem, ticket.id, ticket.position, self.n, self.params[ticket.version])
            self.groups[ticket.id] = _Group(ticket)
        self.server.submit(requests)
        self.in_flight += len(requests)

    def _take(self, finished: list[Finished]) -> None:
        for result in sorted(finished, key=lambda f: f.id):
            self.stats.generated_tokens += len(result.token_ids)
            group = self.groups.get(result.id[0])
            if group is None or result.finish_reason == "abort":  # an aborted group's
                continue
            group.finished.append(result)
            self.in_flight -= 1
            if len(group.finished) == self.n:
                group.finished.sort(key=lambda f: f.id)
                texts = [self.tokenizer.decode(f.token_ids, skip_special_tokens=True) for f in group.finished]
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
