"""Asynchronous rollout (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3: rollout–train decoupling), the sampler
the rollout callback runs under ``rollout.async_ratio`` (α).

A :class:`zoo.rollout.workers.worker.RolloutWorker` generates without pause into a
:class:`zoo.rollout.workers.sample_buffer.SampleBuffer`, its engine server (:mod:`zoo.rollout.workers.engine_server`) on
its own copy of the policy: a thread (``rollout.workers=thread``, the default), a spawned process (``process``: no
shared GIL) or a Ray actor (``ray``); ``rollout.num_workers`` of them share the buffer, on the policy's device or
``rollout.worker_device`` (a list: worker k on device k, in turn). On a CPU the servers get
``rollout.worker_threads`` torch threads (default 1) and the trainer's are cut to the other cores (measured on 2
cores: a decoder's second OpenMP thread gains nothing, and oversubscribed teams slow the trainer 2.4x). Each training
step takes its batch from the buffer (groups begun at most α versions ago, oldest first), hands the expired
prompts' requests to the worker to abort, and after the optimizer steps pushes the new weights: suspend the
worker → copy the weights in → advance the buffer to the next version → resume. The version counts training
steps (batches), not optimizer steps.

α = 0 is the synchronous loop: each version begins exactly its step's prompts, in the loader's order, seeded as
the synchronous step seeds them, so the weights equal the synchronous schedule's bit for bit (tested). With
α > 0 which samples a step trains depends on timing, so runs are not bitwise repeatable.

Logged every step under ``async/``: the trained samples' staleness (mean, max, and a TensorBoard histogram), the
buffer's finished groups waiting, prompts expired so far, the trainer's wait for its batch, the worker's idle
share (nothing to run: waiting for the trainer) and suspended time, and the weight-push time. Checkpointed: the
buffer's durable state and the prompt stream (prompts in flight at a checkpoint are regenerated after a resume,
first in line: none is lost or trained twice; with α = 0 the resume is exact).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from zoo.errors import ConfigError, require_int
from zoo.generation.engine import GenerationResult, Sample
from zoo.generation.native import NativeEngine
from zoo.rl.rollout import Round
from zoo.rollout.samplers.base import Sampler
from zoo.rollout.samplers.queue import concatenate_rewards
from zoo.rollout.workers.engine_server import EngineSpec, process_server, thread_server
from zoo.rollout.workers.sample_buffer import BufferClosed, SampleBuffer
from zoo.rollout.workers.worker import RolloutWorker, WorkerStats
from zoo.text.loader import PromptStream
from zoo.training.loggers import log_histogram

log = logging.getLogger("zoo")
BATCH_POLL_S = 1.0  # how often a waiting trainer checks that the worker is alive


class _ChunkedStream:
    """The loader's prompt order, drawn a step's worth at a time (an epoch's tail shorter than a step is skipped,
    as the loader's ``drop_last`` does) and handed out one by one. ``handed`` counts them: each is trained once or
    waits in the buffer."""

    def __init__(self, stream: PromptStream, chunk: int) -> None:
        self.stream, self.chunk, self.ready, self.handed = stream, chunk, deque(), 0

    def __call__(self, count: int) -> list[int]:
        while len(self.ready) < count:
            self.ready.extend(self.stream.take(self.chunk, self.chunk))
        self.handed += count
        return [self.ready.popleft() for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "ready": list(self.ready), "handed": self.handed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        self.ready, self.handed = deque(state["ready"]), state["handed"]


WORKERS = ("thread", "process", "ray")  # where the engine servers run


@dataclass(frozen=True)
class AsyncOptions:
    """``rollout.async_ratio``'s settings (the rollout config's keys of the same names; see the module's
    docstring)."""

    async_ratio: float  # alpha: trained groups were begun at most this many policy versions ago
    worker_device: str | list[str] | None = None  # None: the policy's; a list: worker k on device k, in turn
    worker_threads: int | None = None  # each CPU server's torch threads (None: 1 on a CPU)
    workers: str = "thread"  # thread | process | ray
    wait_for_stragglers: bool = True
    num_workers: int = 1
    ray_address: str | None = None
    worker_resources: dict | None = None
    max_running: int | None = None  # the engines' rows in all (None: every request the budget allows)

    def __post_init__(self) -> None:
        ratio = self.async_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio >= 0:
            raise ConfigError(f"rollout.async_ratio must be a number >= 0 (or null), got {ratio!r}")
        if self.worker_threads is not None:
            require_int("rollout.worker_threads", self.worker_threads, 1)
        if self.workers not in WORKERS:
            raise ConfigError(f"rollout.workers {self.workers!r} is not one of {', '.join(WORKERS)}")
        require_int("rollout.num_workers", self.num_workers, 1)
        if self.workers != "ray" and (self.ray_address is not None or self.worker_resources):
            raise ConfigError("rollout.ray_address and rollout.worker_resources are for rollout.workers=ray")
        if self.max_running is not None:
            require_int("rollout.max_running", self.max_running, 1)


class AsyncSampler(Sampler):
    def __init__(self, callback, trainer: L.Trainer) -> None:
        data = trainer.datamodule
        self.callback, self.problems = callback, data.train_set
        self.prompts_per_step = data.hparams.batch_size
        stream = PromptStream(len(self.problems), data.hparams.seed, trainer.global_rank, trainer.world_size)
        self.prompts = _ChunkedStream(stream, self.prompts_per_step)
        self.options: AsyncOptions = callback.async_options
        wait = self.options.wait_for_stragglers
        self.buffer = SampleBuffer(self.prompts_per_step, self.options.async_ratio, self.prompts, wait)
        self.workers: list[RolloutWorker] = []
        self.logged_at = 0.0
        self.logged = WorkerStats()
        self.push_seconds = 0.0
        self.trained_prompts = 0
        self.trainer_threads: int | None = None  # the trainer's torch threads before the worker took a core

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, module: L.LightningModule) -> None:
        """Start the worker's engine server on a copy of the policy and generate for the current version (at the
        first step: a resumed run's step and weights are restored by then, not yet when the fit starts)."""
        callback, options, c = self.callback, self.options, module.rollout_config
        N = self.prompts_per_step
        rows = options.max_running or c.n * (N + math.ceil(N * self.buffer.async_ratio))  # the whole budget
        chosen = options.worker_device or str(module.device)
        devices = [torch.device(d) for d in (chosen if isinstance(chosen, list | tuple) else [chosen])]
        device = devices[0]
        sync = callback.weight_sync
        weights, lora = sync.worker_weights(module, in_process=options.workers == "thread")
        spec = EngineSpec(
            model_config=module.model.config,
            weights=weights,
            tokenizer=module.tokenizer,
            dtype=sync.dtype,
            engine_options=callback.engine_options,
            device=str(device),
            max_running=rows,
            max_length=max(len(p["prompt_ids"]) for p in self.problems) + c.max_new_tokens,
            max_new_tokens=c.max_new_tokens,
            threads=options.worker_threads or (1 if device.type == "cpu" else None),
            lora=lora,
        )
        if device.type == "cpu" and module.device.type == "cpu":  # the server's cores are not the trainer's
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            trainer_threads = max(1, min(torch.get_num_threads(), cores - spec.threads))
            if trainer_threads != torch.get_num_threads():
                log.info("async rollout: the trainer keeps %d of %d cores' torch threads", trainer_threads, cores)
                self.trainer_threads = torch.get_num_threads()  # given back when the worker stops
                torch.set_num_threads(trainer_threads)
        K = options.num_workers
        spec.max_running = rows = -(-rows // K)  # each worker's share of the rows
        if options.workers != "thread":  # the weights travel to another process: from host memory
            spec.weights = {name: tensor.cpu() for name, tensor in spec.weights.items()}
        self.workers = []
        for k in range(K):
            spec.device = str(devices[k % len(devices)])  # worker k's device (a list of them: one each, in turn)
            if options.workers == "process":
                server = process_server(spec)
            elif options.workers == "ray":
                from zoo.rollout.workers.ray_actors import ray_server

                server = ray_server(spec, options.ray_address, dict(options.worker_resources or {}))
            else:
                replica = sync.replica(module).to(spec.device)
                engine = NativeEngine(replica, module.tokenizer, sync.dtype, **callback.engine_options)
                engine.load_weights(spec.weights.items())  # a fresh network when the policy is sharded or LoRA
                server = thread_server(spec, engine)
            score, tokenizer = module.submit_scores, module.tokenizer
            self.workers.append(RolloutWorker(server, self.buffer, self.problems, c.n, score, tokenizer, rows))
        if self.buffer.version < 0:
            self.buffer.advance(0)
        for worker in self.workers:
            worker.set_policy(None, self.buffer.version, module.sampling_params())
            worker.start()
        self.logged_at = time.perf_counter()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
        if self.trainer_threads is not None:
            torch.set_num_threads(self.trainer_threads)
            self.trainer_threads = None
        self.buffer.close()

    # -- a training step --------------------------------------------------------------------------------
    def next_round(self, module: L.LightningModule) -> Round:
        if not self.workers:
            self.start(module)
        start = time.perf_counter()
        while True:
            self._raise_worker_error()
            try:
                groups = self.buffer.get_batch(timeout=BATCH_POLL_S)
                break
            except TimeoutError:
                continue
            except BufferClosed:  # a worker that failed closes the buffer: its error is the cause
                self._raise_worker_error()
                raise
        waited = time.perf_counter() - start
        self.trained_prompts += len(groups)
        expired = self.buffer.expire()
        for worker in self.workers:  # each aborts the tickets it holds
            worker.abort(expired)
        samples = [
            Sample(k, f.token_ids, f.logprobs, f.finish_reason)
            for k, group in enumerate(groups)
            for f in group.payload.finished
        ]
        result = GenerationResult(samples, generated_tokens=sum(g.payload.generated_tokens for g in groups))
        launched = [self.problems[g.ticket.problem] for g in groups]
        step = Round.from_generation(launched, result, module.tokenizer, module.device)
        step.rewards = concatenate_rewards([g.payload.rewards for g in groups])
        self._log(module, groups, waited, result)
        return step

    def _raise_worker_error(self) -> None:
        for worker in self.workers:
            if worker.error is not None:
                raise RuntimeError(f"a rollout worker stopped: {worker.error}") from worker.error

    def push(self, module: L.LightningModule) -> None:
        """The new weights into the workers' engines, as the next version."""
        if not self.workers:  # no step ran
            return
        start = time.perf_counter()
        for worker in self.workers:
            worker.suspend()
        weights = list(self.callback.weight_sync.weights(module))
        for worker in self.workers:
            worker.set_policy(weights, self.buffer.version + 1, module.sampling_params())
        self.buffer.advance(self.buffer.version + 1)
        for worker in self.workers:
            worker.resume()
        self.push_seconds = time.perf_counter() - start

    # -- observability ----------------------------------------------------------------------------------
    def _log(self, module: L.LightningModule, groups, waited: float, result: GenerationResult) -> None:
        staleness = torch.tensor([float(g.staleness) for g in groups])
        stats, last = WorkerStats(), self.logged
        for worker in self.workers:
            for key, value in vars(worker.stats).items():
                setattr(stats, key, getattr(stats, key) + value)
        now = time.perf_counter()
        elapsed, self.logged_at = (now - self.logged_at) * len(self.workers), now
        metrics = {
            "async/staleness_mean": staleness.mean().item(),
            "async/staleness_max": staleness.max().item(),
            "async/version": float(self.buffer.version),
            "async/buffer_size": float(self.buffer.size),
            "async/expired_prompts": float(self.buffer.expired_total),
            "async/trainer_wait_s": waited,
            "async/worker_idle_share": (stats.idle_s - last.idle_s) / max(elapsed, 1e-9),
            "async/worker_suspended_s": stats.suspended_s - last.suspended_s,
            "async/weight_push_s": self.push_seconds,
            "async/aborted_requests": float(stats.aborted_requests),
        }
        module.log_dict(metrics)
        self.logged = WorkerStats(**vars(stats))
        self.callback.log_generation(module, result, max(stats.busy_s - last.busy_s, 1e-9), "rollout")
        log_histogram(module.trainer, "async/staleness", staleness, module.global_step)

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        with self.buffer.condition:  # one snapshot: the worker draws prompts under this lock
            return {
                "buffer": self.buffer.state_dict(),
                "prompts": self.prompts.state_dict(),
                "trained_prompts": self.trained_prompts,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.prompts.load_state_dict(state["prompts"])
        self.trained_prompts = state["trained_prompts"]
