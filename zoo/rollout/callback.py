"""The rollout callback: owns the rollout engine, serves the RL module's generation requests, keeps the engine's
weights in step with the policy, runs the rollout's own sampler when one is chosen, and logs what was generated.

- ``engine: auto`` (default): ``native`` for zoo's models, ``hf`` for Hugging Face ones; ``native``
  (:class:`zoo.generation.native.NativeEngine` on a private copy of the policy: every zoo model, CPU and GPU; CUDA
  graphs on a GPU), ``hf`` (transformers' ``generate`` on the same weights) or ``vllm`` (the ``vllm`` extra), built
  by :func:`zoo.generation.build_engine`. ``dtype`` (e.g. bf16 on a GPU) is the engine's; the ``hf`` and ``vllm``
  engines default to the policy's. ``engine_options`` go to the engine (native: ``decode``; vllm: ``vllm.LLM``
  arguments such as ``gpu_memory_utilization``).
- What the engine holds and what a sync sends (``lora_sync``, ``quantization``): :mod:`zoo.rollout.weights`.
- After every ``sync_every`` optimizer steps the policy's weights are copied into the engine (gathered first when
  the policy is sharded); in between the engine samples from a slightly older policy, which the RL losses can
  correct with truncated importance sampling.
- The rollout's own samplers, one at a time: ``schedule: queue`` (queue scheduling, :mod:`zoo.rollout.samplers.queue`,
  with ``extra_prompts``, ``filter_groups``, ``max_launched_prompts``, ``max_running``; the native and vllm
  engines), ``async_ratio`` (asynchronous rollout, :mod:`zoo.rollout.samplers.asynchronous`, with
  ``worker_device``, ``worker_threads``, ``workers``, ``num_workers``, ``ray_address``, ``worker_resources``,
  ``wait_for_stragglers``, ``max_running``; the native engine) and ``agent`` (multi-turn agents with environments,
  :mod:`zoo.rollout.samplers.agent`; the native engine). ``schedule: batch`` (default) with none of them runs a
  step's prompts as one batch. A sampler's state is part of the checkpoint.
- Logged per rollout: generated tokens/s, mean and max completion length, the share of each finish reason, a
  histogram of completion lengths and, every ``log_samples_every`` rollouts, ``log_samples`` sampled texts.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import lightning as L
import torch

from zoo.errors import ConfigError
from zoo.generation import ENGINES, build_engine, engine_for
from zoo.generation.engine import Engine, GenerationResult
from zoo.generation.sampling import SamplingParams
from zoo.rollout.samplers.agent import AgentSampler, agent_config
from zoo.rollout.samplers.asynchronous import AsyncOptions, AsyncSampler
from zoo.rollout.samplers.base import Sampler
from zoo.rollout.samplers.queue import QueueOptions, QueueSampler
from zoo.rollout.weights import WeightSync
from zoo.training.loggers import log_histogram, log_text, takes_media

log = logging.getLogger("zoo")
SCHEDULES = ("batch", "queue")
SAMPLERS = {"queue": QueueSampler, "async": AsyncSampler, "agent": AgentSampler}  # the checkpoint's key: the class
QUEUE_KEYS = {f.name for f in fields(QueueOptions)}
ASYNC_KEYS = {f.name for f in fields(AsyncOptions)}
NATIVE_ONLY = ("auto", "native")


class RolloutCallback(L.Callback):
    def __init__(
        self,
        engine: str = "auto",
        sync_every: int = 1,
        dtype: str | None = None,
        engine_options: dict | None = None,
        log_samples: int = 3,
        log_samples_every: int = 20,
        schedule: str = "batch",
        agent: dict | None = None,
        lora_sync: str = "merged",
        quantization: str | None = None,
        **sampler_options: Any,
    ) -> None:
        """``sampler_options``: the queue's and asynchronous rollout's settings (:class:`QueueOptions`,
        :class:`AsyncOptions`), given as the rollout config's flat keys."""
        if engine not in ENGINES:
            raise ConfigError(f"rollout engine {engine!r} is not available; engines: {', '.join(ENGINES)}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"rollout.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
        unknown = sorted(set(sampler_options) - QUEUE_KEYS - ASYNC_KEYS)
        if unknown:
            raise ConfigError(f"unknown rollout setting(s): {', '.join(unknown)}")
        self.engine_name, self.sync_every, self.schedule = engine, sync_every, schedule
        self.engine_options = dict(engine_options or {})
        self.log_samples, self.log_samples_every = log_samples, log_samples_every
        self.weight_sync = WeightSync(lora_sync, quantization, dtype)
        self.queue_options = QueueOptions(**{k: v for k, v in sampler_options.items() if k in QUEUE_KEYS})
        async_settings = {k: v for k, v in sampler_options.items() if k in ASYNC_KEYS}
        self.async_options = AsyncOptions(**async_settings) if async_settings.get("async_ratio") is not None else None
        self.agent = agent_config(agent) if agent is not None else None
        self.sampler_kind = self._sampler_kind(async_settings)
        self.sampler: Sampler | None = None
        self._restored: dict | None = None  # a checkpoint's sampler state, loaded before setup
        self.engine: Engine | None = None
        self.rollouts = 0
        self.synced_step = -1

    def _sampler_kind(self, async_settings: dict[str, Any]) -> str | None:
        """Which of the rollout's samplers runs (None: a step's batch, once through the engine); one line for
        settings that belong to another one or to an engine that cannot run it."""
        queue = self.queue_options
        if self.schedule == "batch" and (queue.extra_prompts or queue.filter_groups):
            raise ConfigError("rollout.extra_prompts and rollout.filter_groups need rollout.schedule=queue")
        native_only = {"rollout.lora_sync=adapters": self.weight_sync.lora_sync == "adapters"}
        if self.async_options is not None:
            if self.schedule != "batch" or queue.extra_prompts or queue.filter_groups:
                raise ConfigError(
                    "rollout.async_ratio runs its own request-level schedule: leave rollout.schedule, "
                    "rollout.extra_prompts and rollout.filter_groups at their defaults"
                )
            native_only["rollout.async_ratio"] = True
        elif any(async_settings.get(key) is not None for key in ("worker_device", "worker_threads")):
            raise ConfigError("rollout.worker_device and rollout.worker_threads are the asynchronous worker's: "
                              "set rollout.async_ratio")  # fmt: skip
        if self.agent is not None and (self.async_options is not None or self.schedule != "batch"):
            raise ConfigError("rollout.agent runs its own multi-turn schedule: leave rollout.async_ratio and "
                              "rollout.schedule at their defaults")  # fmt: skip
        if self.weight_sync.quantization is not None and (
            self.engine_name not in NATIVE_ONLY or self.async_options is not None or self.agent is not None
        ):
            raise ConfigError(
                "rollout.quantization holds the native engine's replica in 8 or 4 bits: it needs rollout.engine=native "
                "and the synchronous loop (no rollout.async_ratio, no rollout.agent)"
            )
        for setting, chosen in native_only.items():
            if chosen and self.engine_name not in NATIVE_ONLY:
                raise ConfigError(f"{setting} needs the native engine, not rollout.engine={self.engine_name}")
        if self.async_options is not None:
            return "async"
        if self.agent is not None:
            return "agent"
        return "queue" if self.schedule == "queue" else None

    # -- lifecycle --------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sampler_kind is None or stage != "fit":
            return
        if self.sampler_kind == "async" and any(isinstance(c, Sampler) for c in trainer.callbacks):
            raise ConfigError(
                "rollout.async_ratio runs its own sampler; it does not combine with sampler=tail_batching"
            )
        self.sampler = SAMPLERS[self.sampler_kind](self, trainer)
        if self._restored is not None:
            self.sampler.load_state_dict(self._restored)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.build(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(self.sampler, AsyncSampler):
            self.sampler.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is None:  # `zoo validate`: no fit, build it now
            self.build(pl_module)
        elif self.synced_step != trainer.global_step:  # evaluate the current policy, not a stale copy
            self.sync(pl_module, trainer.global_step)

    def check(self, config: Any) -> None:
        """Resolve the engine for a policy of ``config`` (``auto``: the one that suits it) and check that it runs
        these settings: one line otherwise, before anything is loaded (:func:`zoo.run.build` calls this)."""
        needs_native = {"async": "rollout.async_ratio", "agent": "rollout.agent"}.get(self.sampler_kind)
        if needs_native and getattr(config, "arch", None) == "hf":
            raise ConfigError(f"{needs_native} needs the native engine, which serves zoo's own models: not yet a "
                              "Hugging Face (arch hf) policy")  # fmt: skip
        self.engine_name = engine_for(config, self.engine_name)
        if self.sampler_kind in ("async", "agent") and self.engine_name != "native":
            raise ConfigError(f"rollout.async_ratio and rollout.agent need the native engine, not {self.engine_name}")
        if self.sampler_kind == "queue" and self.engine_name == "hf":
            raise ConfigError(
                "rollout.schedule=queue needs a request-level engine (native for zoo's models, or vllm): the hf "
                "engine runs batches only; use rollout.schedule=batch"
            )

    def build(self, pl_module: L.LightningModule) -> None:
        policy, tokenizer = pl_module.model, pl_module.trainer.datamodule.tokenizer
        options = self.engine_options
        if self.weight_sync.quantization is not None and options.get("decode", "auto") == "auto":
            options = {**options, "decode": "eager"}  # a sync replaces the quantized layers: no captured graphs
        self.check(policy.config)
        dtype = self.weight_sync.dtype
        if self.engine_name != "native":  # hf and vllm: by default the policy's own
            dtype = dtype or next(policy.parameters()).dtype
        self.engine = build_engine(
            self.engine_name,
            policy.config,
            tokenizer,
            replica=lambda: self.weight_sync.replica(pl_module),
            weights=lambda: self.weight_sync.weights(pl_module),
            device=pl_module.device,
            dtype=dtype,
            options=options,
        )
        self.sync(pl_module, step=pl_module.global_step)
        log.info("rollout: %s engine, weights synced every %d step(s)", self.engine_name, self.sync_every)

    def sync(self, pl_module: L.LightningModule, step: int) -> None:
        self.weight_sync.load(self.engine, pl_module)
        self.synced_step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if isinstance(self.sampler, AsyncSampler):
            self.sampler.push(pl_module)
        if trainer.global_step - self.synced_step >= self.sync_every:
            self.sync(pl_module, trainer.global_step)

    # -- serving ----------------------------------------------------------------------------------------
    def generate(
        self,
        pl_module: L.LightningModule,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
        log_prefix: str = "rollout",
    ) -> GenerationResult:
        start = time.perf_counter()
        result = self.engine.generate(prompts, n, params, finished_groups_quota, group_complete_at)
        self.log_generation(pl_module, result, time.perf_counter() - start, log_prefix)
        return result

    def state_dict(self) -> dict:
        return {self.sampler_kind: self.sampler.state_dict()} if self.sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:  # restored before setup: applied there
        if self.sampler_kind in state:
            if self.sampler is None:
                self._restored = state[self.sampler_kind]
            else:
                self.sampler.load_state_dict(state[self.sampler_kind])

    def log_generation(self, pl_module: L.LightningModule, result: GenerationResult, seconds: float, prefix: str):
        """Log what a rollout generated under ``prefix``: tokens/s, lengths, finish reasons, a few texts."""
        self.rollouts += 1
        lengths = torch.tensor([len(s.token_ids) for s in result.samples], dtype=torch.float)
        if not len(lengths):
            return
        reasons = Counter(s.finish_reason for s in result.samples)
        metrics = {
            f"{prefix}/tokens_per_s": result.generated_tokens / max(seconds, 1e-9),
            f"{prefix}/seconds": seconds,
            f"{prefix}/length_mean": lengths.mean().item(),
            f"{prefix}/length_max": lengths.max().item(),
            **{f"{prefix}/finish_{r}": reasons[r] / len(lengths) for r in ("stop", "length")},
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        trainer, step = pl_module.trainer, pl_module.global_step
        if not takes_media(trainer):
            return
        log_histogram(trainer, f"{prefix}/lengths", lengths, step)
        if self.rollouts % self.log_samples_every == 1 or self.log_samples_every == 1:
            tokenizer = self.engine.tokenizer
            texts = [tokenizer.decode(s.token_ids) for s in result.samples[: self.log_samples]]
            log_text(trainer, f"{prefix}/samples", "\n\n---\n\n".join(f"`{t}`" for t in texts), step)
