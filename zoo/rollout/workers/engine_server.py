"""The engine side of a rollout worker: a request-level core that runs free in its own thread, process or Ray actor,
driven by messages (ROLL Flash's inference worker: engine steps interleaved with ADD and ABORT commands).

:class:`EngineServer` owns a :class:`zoo.generation.native.NativeEngine` core and serves an *inbox* of commands:

- ``("submit", [Request, ...])``: queue requests (one message per admission, so that requests sent together are
  prefilled together, as a synchronous step prefills them);
- ``("abort", [request id, ...])``: drop them (what they had generated comes back with finish reason ``abort``);
- ``("weights", [(name, tensor), ...])``: copy new weights in, between two engine steps;
- ``("stop",)``.

Between commands it steps the engine while there is work and puts every step's finished requests in its *outbox*
as ``("finished", [Finished, ...], seconds spent stepping since the last report)``; an exception goes out as
``("error", traceback text)``.
Commands apply in the order they were sent, so requests submitted after a weight message run on the new weights
(and the requests in flight go on under them, as ROLL's do).

Where the server runs (``rollout.workers``): ``thread`` (this process; the inbox and outbox are ``queue.Queue``),
``process`` (a spawned process with its own copy of the policy and no share of this process's GIL; the queues are
``torch.multiprocessing``'s, tensors travel through shared memory; it dies with the trainer, however the trainer
ends, SIGKILL included: a watchdog thread exits it once its parent is gone, so it never holds memory or a device
after its trainer), or ``ray`` (:mod:`zoo.rollout.workers.ray_actors`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from zoo.generation.engine import Finished, Request

WAIT_S = 0.05  # how long an idle server blocks on its inbox before it looks again


@dataclass
class EngineSpec:
    """What a server needs to build its engine anywhere: the model's config and weights, the tokenizer (stop
    strings), the engine's settings and the core's shape."""

    model_config: Any
    weights: dict[str, torch.Tensor]
    tokenizer: Any
    dtype: torch.dtype | None
    engine_options: dict[str, Any]
    device: str
    max_running: int
    max_length: int
    max_new_tokens: int
    threads: int | None = None  # CPU threads for torch ops in the server's thread
    lora: dict[str, Any] | None = None  # LoRA settings: the engine keeps adapters, and pushes bring only them
    parent_pid: int | None = None  # a server in its own process exits once this process is gone


def exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """Watch, on a daemon thread, that this process's parent is ``parent_pid``; exit at once when it is not (the
    parent died, and this process was handed to another)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="zoo-parent-watchdog", daemon=True).start()


def build_engine(spec: EngineSpec):
    from zoo.generation.native import NativeEngine
    from zoo.models import build_model

    model = build_model(spec.model_config)
    if spec.lora is not None:  # rollout.lora_sync=adapters: the network with the policy's adapters
        from zoo.training.lora import apply_lora, lora_settings

        apply_lora(model, lora_settings(spec.lora))
    params = dict(model.named_parameters())  # a tied head once, as the trainer's named_parameters sends it
    if params.keys() != spec.weights.keys():
        missing, unexpected = sorted(params.keys() - spec.weights.keys()), sorted(spec.weights.keys() - params.keys())
        raise RuntimeError(f"the worker's weights do not fit its network: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, tensor in spec.weights.items():
            params[name].copy_(tensor)
    model = model.to(spec.device).requires_grad_(False)
    return NativeEngine(model, tokenizer=spec.tokenizer, dtype=spec.dtype, **spec.engine_options)


class EngineServer:
    def __init__(self, spec: EngineSpec, engine=None) -> None:
        self.spec, self.engine = spec, engine

    def serve(self, inbox, outbox) -> None:
        """Run until ``("stop",)``; report an error to the outbox instead of raising it."""
        if self.spec.parent_pid is not None:
            exit_with_parent(self.spec.parent_pid)
        try:
            if self.spec.threads is not None:
                torch.set_num_threads(self.spec.threads)  # per thread: the trainer's setting stays
            engine = self.engine or build_engine(self.spec)
            with engine.serving():
                core = engine.core(self.spec.max_running, self.spec.max_length, self.spec.max_new_tokens)
                busy = 0.0  # stepping time not reported yet
                while True:
                    for command in self._commands(inbox, block=not core.busy):
                        kind = command[0]
                        if kind == "stop":
                            return
                        if kind == "submit":
                            for request in command[1]:
                                core.submit(request)
                        elif kind == "abort":
                            aborted = [f for f in map(core.abort, command[1]) if f is not None]
                            if aborted:
                                outbox.put(("finished", aborted, 0.0))
                        elif kind == "weights":
                            engine.load_weights(command[1])
                    if core.busy:
                        start = time.perf_counter()
                        finished = core.step()
                        busy += time.perf_counter() - start
                        if finished:
                            outbox.put(("finished", finished, busy))
                            busy = 0.0
        except BaseException:  # the driver raises it in the trainer
            outbox.put(("error", traceback.format_exc()))

    @staticmethod
    def _commands(inbox, block: bool) -> list[tuple]:
        commands = []
        try:
            commands.append(inbox.get(timeout=WAIT_S) if block else inbox.get_nowait())
            while True:
                commands.append(inbox.get_nowait())
        except queue.Empty:
            return commands


class ServerError(RuntimeError):
    """A rollout engine server failed; the message carries its traceback."""


class ServerChannel:
    """The driver's end of a server: send commands, receive finished requests. ``start`` runs the server."""

    def __init__(self, inbox, outbox, stop: Callable[[], None], alive: Callable[[], bool], runner=None) -> None:
        self.inbox, self.outbox, self._stop, self.alive = inbox, outbox, stop, alive
        self.runner = runner  # the thread, process or actor the server runs in
        self.busy_s = 0.0

    def submit(self, requests: list[Request]) -> None:
        if requests:
            self.inbox.put(("submit", requests))

    def abort(self, ids: list[Any]) -> None:
        if ids:
            self.inbox.put(("abort", ids))

    def load_weights(self, weights) -> None:
        self.inbox.put(("weights", [(name, tensor.detach().cpu()) for name, tensor in weights]))

    def receive(self, timeout: float) -> list[Finished]:
        """The requests finished since the last call; waits up to ``timeout`` for the first."""
        finished: list[Finished] = []
        try:
            message = self.outbox.get(timeout=timeout)
            while True:
                if message[0] == "error":
                    raise ServerError(f"the rollout engine server failed:\n{message[1]}")
                finished += message[1]
                self.busy_s += message[2]
                message = self.outbox.get_nowait()
        except queue.Empty:
            if not finished and not self.alive():
                raise ServerError("the rollout engine server is gone (its process died without a word)") from None
            return finished

    def stop(self) -> None:
        self.inbox.put(("stop",))
        self._stop()


def thread_server(spec: EngineSpec, engine=None) -> ServerChannel:
    """A server in a daemon thread of this process (``engine``: an engine built already, e.g. on the policy's
    device)."""
    inbox, outbox = queue.Queue(), queue.Queue()
    thread = threading.Thread(
        target=EngineServer(spec, engine).serve, args=(inbox, outbox), name="zoo-engine-server", daemon=True
    )
    thread.start()
    return ServerChannel(inbox, outbox, thread.join, thread.is_alive, thread)


def process_server(spec: EngineSpec) -> ServerChannel:
    """A server in a spawned process (its own interpreter and copy of the policy)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    inbox, outbox = context.Queue(), context.Queue()
    spec = replace(spec, parent_pid=os.getpid())
    process = context.Process(
        target=EngineServer(spec).serve, args=(inbox, outbox), name="zoo-engine-server", daemon=True
    )
    process.start()

    def stop() -> None:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()

    return ServerChannel(inbox, outbox, stop, process.is_alive, process)
