"""Engine servers as Ray actors (``rollout.workers=ray``, the ``ray`` extra): asynchronous rollout's generation on
any machine of a Ray cluster, behind the same channel as the in-process servers
(:mod:`zoo.rollout.workers.engine_server`).

Each actor is a threaded actor holding an :class:`zoo.rollout.workers.engine_server.EngineServer` whose loop runs in one
of its threads over two local queues; the driver's commands arrive through ``put`` (called in order and awaited, so
commands apply in the order sent) and finished requests leave through ``take``. The policy's weights travel through
Ray's object store: each push puts them there and the actor reads them from it. Ray is imported only here, when chosen.

``rollout.ray_address``: where the cluster is (``null``: the one this process belongs to, else a new local one;
``auto``, or ``ray://HOST:10001`` for a remote cluster's client server); ``rollout.worker_resources``: what each
actor asks of it (default ``{num_cpus: 1}``; ``{num_gpus: 1}`` places it on a GPU of its own). On GPUs the
object store copies weights through host memory; a collective (NCCL broadcast from the trainer's rank to the
actors, ``ray.util.collective``) would skip that copy and is not built.
"""

from __future__ import annotations

import queue
from typing import Any

from zoo.errors import ConfigError
from zoo.rollout.workers.engine_server import EngineServer, EngineSpec, ServerChannel

TAKE_WAIT_S = 0.002


def _ray():
    try:
        import ray
    except ImportError as error:
        raise ConfigError("rollout.workers=ray needs Ray: pip install 'zoo[ray]'") from error
    return ray


class _EngineActor:
    def __init__(self, spec: EngineSpec) -> None:
        self.server, self.inbox, self.outbox = EngineServer(spec), queue.Queue(), queue.Queue()

    def serve(self) -> None:
        self.server.serve(self.inbox, self.outbox)

    def put(self, command: tuple) -> None:
        if command[0] == "weights":  # a reference to the weights in the object store
            command = ("weights", _ray().get(command[1]))
        self.inbox.put(command)

    def take(self, timeout: float) -> list[tuple]:
        messages = []
        try:
            messages.append(self.outbox.get(timeout=timeout))
            while True:
                messages.append(self.outbox.get_nowait())
        except queue.Empty:
            return messages


class _Inbox:
    """The driver's side of an actor's inbox: a ``put`` that returns once the actor has queued the command."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def put(self, command: tuple) -> None:
        ray = _ray()
        if command[0] == "weights":
            command = ("weights", ray.put(command[1]))
        ray.get(self.actor.put.remote(command))


class _Outbox:
    """The driver's side of an actor's outbox, with the ``get`` / ``get_nowait`` of a queue."""

    def __init__(self, actor) -> None:
        self.actor, self.ready = actor, []

    def get(self, timeout: float | None = None) -> tuple:
        if not self.ready:
            self.ready = _ray().get(self.actor.take.remote(timeout or TAKE_WAIT_S))
        return self.get_nowait()

    def get_nowait(self) -> tuple:
        if not self.ready:
            raise queue.Empty
        return self.ready.pop(0)


def ray_server(spec: EngineSpec, address: str | None = None, resources: dict[str, Any] | None = None) -> ServerChannel:
    """An engine server in a new Ray actor (Ray started or joined first)."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    options = {"num_cpus": 1, **(resources or {})}
    actor = ray.remote(max_concurrency=4)(_EngineActor).options(**options).remote(spec)
    serving = actor.serve.remote()

    def alive() -> bool:
        finished, _ = ray.wait([serving], timeout=0)
        return not finished

    def stop() -> None:
        ray.wait([serving], timeout=30)
        ray.kill(actor)

    return ServerChannel(_Inbox(actor), _Outbox(actor), stop, alive, actor)
