"""The versioned sample buffer of asynchronous RL (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3: rollout–train
decoupling with an asynchronous ratio α; the semantics of ROLL's ``ReplayBuffer``).

Rollout workers and the trainer share it. A worker :meth:`~SampleBuffer.begin`\\ s a prompt (a *ticket*), which
binds the prompt to the policy **version** its generation begins under, generates and scores the prompt's group,
and :meth:`~SampleBuffer.commit`\\ s it; the trainer at version ``n`` takes its batch with
:meth:`~SampleBuffer.get_batch` and, when it has pushed new weights, :meth:`~SampleBuffer.advance`\\ s the buffer
to ``n + 1``.

- **Staleness.** A batch at version ``n`` holds only groups begun at versions ``≥ n − ⌈α⌉``, oldest first; for a
  fractional α at most ``⌊frac(α)·N⌋`` of its ``N`` groups come from the oldest allowed version ``n − ⌈α⌉``. So
  no group is more than ``⌈α⌉`` versions stale and the batch's mean staleness is at most α. With
  ``wait_for_stragglers`` (ROLL's rule, the default) an older version's share waits for that version's running
  prompts; the current version fills the rest. Without it a batch takes what has finished, and a straggler that
  outlives the window expires (the tokens it had made are wasted) and is begun again, first in line and
  **protected**: the batch of the version it then reaches the window's end in waits for it, and takes it first.
  So a long response delays a batch at most once, and is trained at most one window late (without protection a
  prompt too long for the window would expire again and again: measured, the countdown benchmark's trained
  responses fell to 6.8 tokens from 22.6).
- **Budget.** Prompts may begin while ``running + committed < budget``; every advance adds ``N`` to the budget, and
  the first adds ``⌈α·N⌉`` more: the workers run at most that far ahead of the trainer. α = 0 is synchronous
  training: each version begins exactly the ``N`` prompts its step trains.
- **Expiry.** :meth:`~SampleBuffer.expire` (after a batch is taken) drops what no later batch may take: prompts
  begun at versions ``≤ n − ⌈α⌉``, running or finished. Their prompts return to the prompt stream (first in line)
  and their budget is freed: nothing is lost, nothing is trained twice.
- **Durable state.** :meth:`~SampleBuffer.state_dict` keeps the version, the budget and every prompt begun and not
  trained (running and finished work is not kept: a resumed run regenerates it, first in line).

Prompts come from ``fresh(count)`` (problem indices, e.g. :class:`zoo.text.loader.PromptStream`); the ``k``-th prompt
begun at a version is its ``position`` there, which seeds its samples. Thread-safe: every method holds one lock,
and :meth:`get_batch` waits on its condition.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ticket:
    id: int  # unique in the run
    problem: int  # index of the prompt's problem
    version: int  # the policy version the prompt's generation began under
    position: int  # the k-th prompt begun at that version
    protected: bool = False  # begun again after it expired: batches wait for it (without wait_for_stragglers)


@dataclass
class Group:
    ticket: Ticket
    payload: Any  # the worker's result (samples, rewards, ...)
    staleness: int = 0  # trainer version − ticket.version when taken


class BufferClosed(Exception):
    """Raised in a thread waiting on a closed buffer."""


class SampleBuffer:
    def __init__(
        self,
        prompts_per_step: int,
        async_ratio: float,
        fresh: Callable[[int], list[int]],
        wait_for_stragglers: bool = True,
    ) -> None:
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        if not async_ratio >= 0:
            raise ValueError(f"async_ratio must be >= 0, got {async_ratio}")
        self.prompts_per_step, self.async_ratio, self.fresh = prompts_per_step, async_ratio, fresh
        self.wait_for_stragglers = wait_for_stragglers
        self.window = math.ceil(async_ratio)  # how many versions back a batch may reach
        self.version = -1  # before the first advance
        self.budget = 0
        self.next_id = 0
        self.running: dict[int, Ticket] = {}
        self.finished: dict[int, deque[Group]] = {}  # per version, in commit order
        self.committed = 0  # prompts committed and not expired (trained ones included: they used the budget)
        self.returned: deque[int] = deque()  # prompts to begin again, first in line
        self.positions: Counter[int] = Counter()  # prompts begun per version
        self.expired_total = 0
        self.protected_problems: set[int] = set()  # expired prompts, protected when they are begun again
        self.condition = threading.Condition()
        self.closed = False

    # -- the trainer's side ------------------------------------------------------------------------------
    def advance(self, version: int) -> None:
        """The policy is now ``version`` (versions only grow): ``N`` more prompts may begin (the first time
        ``⌈α·N⌉`` more)."""
        with self.condition:
            if version <= self.version:
                raise ValueError(f"the buffer is at version {self.version}; cannot advance to {version}")
            if self.version < 0:
                self.budget += math.ceil(self.prompts_per_step * self.async_ratio)
            self.budget += self.prompts_per_step
            self.version = version
            self.condition.notify_all()

    def batch_ready(self) -> bool:
        """Whether the current version's batch could be taken now."""
        with self.condition:
            return self._plan() is not None

    def ready_batch(self) -> list[Group] | None:
        """The batch at the current version if it can be taken now (removed from the buffer), else None."""
        with self.condition:
            plan = self._plan()
            if plan is None:
                return None
            taken = []
            for version, count in plan:
                groups = sorted(self.finished[version], key=lambda g: not g.ticket.protected)  # protected first
                self.finished[version] = deque(groups[count:])
                for group in groups[:count]:
                    group.staleness = self.version - version
                    taken.append(group)
            taken.sort(key=lambda g: (g.ticket.version, g.ticket.position))
            return taken

    def get_batch(self, timeout: float | None = None) -> list[Group]:
        """Wait for the current version's batch and take it (``N`` groups, oldest versions first)."""
        with self.condition:
            while (batch := self.ready_batch()) is None:
                if self.closed:
                    raise BufferClosed("the sample buffer was closed while the trainer waited for a batch")
                if not self.condition.wait(timeout):
                    raise TimeoutError(f"no batch for version {self.version} within {timeout} s: {self.describe()}")
            return batch

    def _plan(self) -> list[tuple[int, int]] | None:
        need, plan = self.prompts_per_step, []
        oldest = self.version - self.window
        fraction = self.async_ratio - math.floor(self.async_ratio)
        for version in range(oldest, self.version + 1):
            if version < 0:
                continue
            share = need
            if version == oldest and fraction > 0:
                share = min(need, int(self.prompts_per_step * fraction))
            finished = len(self.finished.get(version, ()))
            if version == self.version:  # the current version fills the rest
                if finished < need:
                    return None
            else:
                running = [t for t in self.running.values() if t.version == version]
                if self.wait_for_stragglers and finished < share and running:
                    return None  # an older version's share waits for its running prompts
                if version == oldest and any(t.protected for t in running):
                    return None  # a protected prompt must not expire again
            count = min(share, finished)
            if count:
                plan.append((version, count))
            need -= count
            if need == 0:
                break
        return plan

    def expire(self) -> list[Ticket]:
        """Drop what no later batch may take (begun at versions ``≤ current − ⌈α⌉``): the running tickets, which
        the caller aborts, are returned; every dropped prompt goes back to the prompt stream."""
        with self.condition:
            limit = self.version - self.window
            tickets = [t for t in self.running.values() if t.version <= limit]
            for ticket in tickets:
                del self.running[ticket.id]
            dropped = list(tickets)
            for version in [v for v in self.finished if v <= limit]:
                groups = self.finished.pop(version)
                self.committed -= len(groups)
                dropped += [g.ticket for g in groups]
            self.returned.extend(t.problem for t in sorted(dropped, key=lambda t: (t.version, t.position)))
            self.protected_problems.update(t.problem for t in dropped)
            self.expired_total += len(dropped)
            self.condition.notify_all()
            return tickets

    # -- the workers' side -------------------------------------------------------------------------------
    def begin(self) -> Ticket | None:
        """A prompt to generate, bound to the current version; None while the budget is spent."""
        with self.condition:
            if self.closed or self.version < 0 or len(self.running) + self.committed >= self.budget:
                return None
            problem = self.returned.popleft() if self.returned else self.fresh(1)[0]
            protected = problem in self.protected_problems
            self.protected_problems.discard(problem)
            ticket = Ticket(self.next_id, problem, self.version, self.positions[self.version], protected)
            self.next_id += 1
            self.positions[self.version] += 1
            self.running[ticket.id] = ticket
            return ticket

    def commit(self, ticket: Ticket, payload: Any) -> bool:
        """A ticket's finished group; False (and dropped) when the ticket expired meanwhile."""
        with self.condition:
            if self.running.pop(ticket.id, None) is None:
                return False
            self.finished.setdefault(ticket.version, deque()).append(Group(ticket, payload))
            self.committed += 1
            self.condition.notify_all()
            return True

    def abort(self, ticket: Ticket) -> None:
        """Give a running ticket up (its prompt goes back to the stream, its budget is freed)."""
        with self.condition:
            if self.running.pop(ticket.id, None) is not None:
                self.returned.appendleft(ticket.problem)
                if ticket.protected:  # it stays protected when it is begun again
                    self.protected_problems.add(ticket.problem)
                self.condition.notify_all()

    # -- bookkeeping -------------------------------------------------------------------------------------
    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()

    @property
    def size(self) -> int:
        """Finished groups waiting to be trained."""
        with self.condition:
            return sum(len(groups) for groups in self.finished.values())

    def describe(self) -> str:
        with self.condition:
            finished = {v: len(g) for v, g in self.finished.items() if g}
            return (
                f"version {self.version}, budget {self.budget}, running {len(self.running)}, "
                f"committed {self.committed}, finished per version {finished}, returned {len(self.returned)}"
            )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the prompts begun and not trained (oldest first, before those already
        returned) come back first; the version and budget go on where they were."""
        with self.condition:
            waiting = sorted(
                [*self.running.values(), *(g.ticket for groups in self.finished.values() for g in groups)],
                key=lambda t: (t.version, t.position),
            )
            return {
                "version": self.version,
                "budget": self.budget,
                "committed": self.committed - sum(len(g) for g in self.finished.values()),
                "returned": [t.problem for t in waiting] + list(self.returned),
                "next_id": self.next_id,
                "expired_total": self.expired_total,
                "protected": sorted(self.protected_problems | {t.problem for t in waiting if t.protected}),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.condition:
            self.version, self.budget, self.committed = state["version"], state["budget"], state["committed"]
            self.returned = deque(state["returned"])
            self.next_id, self.expired_total = state["next_id"], state["expired_total"]
            self.protected_problems = set(state.get("protected", ()))
            self.running, self.finished, self.positions = {}, {}, Counter()
