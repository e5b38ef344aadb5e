"""The rollout callback: owns the rollout engine, serves the RL module's generation requests, keeps the engine's
weights in step with the policy, and logs what was generated.

- ``engine: auto`` (default): ``native`` for zoo's models, ``hf`` for Hugging Face ones;
  ``engine: native``: :class:`zoo.generation.native.NativeEngine` on a private copy of the policy (every zoo
  model, CPU and GPU; CUDA graphs on a GPU), optionally in ``dtype`` (e.g. bf16 on a GPU; the ``hf`` and ``vllm``
  engines default to the policy's dtype);
  ``engine: hf``: transformers' ``generate`` on the same weights (:mod:`zoo.generation.hf`);
  ``engine: vllm``: vLLM (:mod:`zoo.generation.vllm`, the ``vllm`` extra). ``engine_options`` go to the engine
  (native: ``decode``; vllm: ``vllm.LLM`` arguments such as ``gpu_memory_utilization``).
- A LoRA policy (``model.lora``, :mod:`zoo.training.lora`): ``lora_sync: merged`` (default) serves the merged weights
  ``W + (alpha / r) B A`` in the plain network, on every engine; ``adapters`` (the native engine, in this process
  or in asynchronous rollout's process and Ray workers, which receive the base once) keeps the adapters in the
  replica and syncs only them.
- ``quantization: 8bit | 4bit``: the native engine's replica held by bitsandbytes (:mod:`zoo.training.quantization`),
  quantized afresh from the policy's weights at every sync (the synchronous loop; decoded eagerly): the engine's
  log-probs then differ from the policy's by the quantization, which truncated importance sampling corrects.
- After every ``sync_every`` optimizer steps the policy's weights are copied into the engine (gathered first
  when the policy is sharded); in between the engine samples from a slightly older policy, which the RL
  losses can correct with truncated importance sampling.
- ``schedule``: ``batch`` (default) runs a step's prompts as one batch; ``queue`` runs it with queue scheduling
  (:mod:`zoo.rollout.samplers.queue`; the native and vllm engines): every response is a request of the
  continuous-batching engine, each prompt's group is scored as soon as it completes, ``extra_prompts`` more prompts than
  the step trains are launched and the step stops once enough groups are complete; with ``filter_groups`` (DAPO) a group
  whose rewards are all equal does not count, and a new prompt replaces it, up to ``max_launched_prompts`` a step.
  ``max_running`` caps the engine's rows (default: every launched request at once). Prompts a step launched and
  did not train come back first, protected, the next step. The prompt order and those prompts are checkpointed.
- ``async_ratio`` (α; default null: the synchronous loop): asynchronous rollout (ROLL Flash; the native engine):
  a worker generates on its own copy of the policy (on ``worker_device``, default the policy's, or a list of
  devices taken in turn by the ``num_workers`` workers; with
  ``worker_threads`` CPU threads, default 1 on a CPU) while the trainer trains, each step trains groups begun at
  most α versions ago (:mod:`zoo.rollout.samplers.asynchronous`); α = 0 gives the synchronous weights bit for bit.
  ``max_running`` caps the engines' rows (default: every request the budget allows at once, split between the
  ``num_workers`` workers); ``workers``: where the engine servers run (``thread``, ``process`` or ``ray``: Ray
  actors, on the cluster at ``ray_address``, each asking ``worker_resources``); ``wait_for_stragglers`` (ROLL's
  rule, default true): an older version's share of a batch waits for its running prompts, or else (false)
  stragglers expire and are begun again, protected (the batch at the end of their new window waits for them).
- ``agent``: multi-turn agents with environments (:mod:`zoo.rollout.samplers.agent`: each step rolls out the
  prompts' trajectories with environment-level asynchrony; the native engine).
- Logged per rollout: generated tokens/s, mean and max completion length, the share of each finish reason, a
  histogram of completion lengths and, every ``log_samples_every`` rollouts, a few sampled texts; under
  ``schedule: queue`` also ``queue/``: slot occupancy (mean running rows / rows), waiting requests, aborted
  requests, filtered groups, reward latency (a group's completion to its scores), prompts launched and the mean
  length of the trained and of the aborted responses.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.distributed.tensor import DTensor

from zoo.errors import ConfigError, require_int
from zoo.generation import ENGINES, engine_for
from zoo.generation.engine import GenerationResult
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.rl.rollout import Round
from zoo.rollout.samplers.agent import AgentSampler, agent_config
from zoo.rollout.samplers.asynchronous import AsyncSampler
from zoo.rollout.samplers.base import Sampler
from zoo.rollout.samplers.queue import QueueOutcome, QueuePlanner, QueueStats, run_queue_round
from zoo.text.loader import PromptStream
from zoo.training.lora import has_lora, merged_weights
from zoo.training.quantization import check_bits, is_quantized, load_quantized, quantize_frozen

log = logging.getLogger("zoo")
SCHEDULES = ("batch", "queue")
WORKERS = ("thread", "process", "ray")  # where asynchronous rollout's engine servers run
LORA_SYNCS = ("merged", "adapters")  # what a LoRA policy's engine samples from: merged weights, or base + adapters


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


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
        extra_prompts: int = 0,
        filter_groups: bool = False,
        max_launched_prompts: int | None = None,
        max_running: int | None = None,
        async_ratio: float | None = None,
        worker_device: str | list[str] | None = None,
        worker_threads: int | None = None,
        workers: str = "thread",
        wait_for_stragglers: bool = True,
        num_workers: int = 1,
        ray_address: str | None = None,
        worker_resources: dict | None = None,
        agent: dict | None = None,
        lora_sync: str = "merged",
        quantization: str | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"rollout engine {engine!r} is not available; engines: {', '.join(ENGINES)}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"rollout.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
        require_int("rollout.extra_prompts", extra_prompts, 0)
        if max_launched_prompts is not None:
            require_int("rollout.max_launched_prompts", max_launched_prompts, 1)
        if max_running is not None:
            require_int("rollout.max_running", max_running, 1)
        if schedule == "batch" and (extra_prompts or filter_groups):
            raise ConfigError("rollout.extra_prompts and rollout.filter_groups need rollout.schedule=queue")
        if async_ratio is not None:
            if isinstance(async_ratio, bool) or not isinstance(async_ratio, int | float) or not async_ratio >= 0:
                raise ConfigError(f"rollout.async_ratio must be a number >= 0 (or null), got {async_ratio!r}")
            if schedule != "batch" or extra_prompts or filter_groups:
                raise ConfigError(
                    "rollout.async_ratio runs its own request-level schedule: leave rollout.schedule, "
                    "rollout.extra_prompts and rollout.filter_groups at their defaults"
                )
            if engine not in ("auto", "native"):
                raise ConfigError(f"rollout.async_ratio needs the native engine, not rollout.engine={engine}")
        elif worker_device is not None or worker_threads is not None:
            raise ConfigError("rollout.worker_device and rollout.worker_threads are the asynchronous worker's: "
                              "set rollout.async_ratio")  # fmt: skip
        if worker_threads is not None:
            require_int("rollout.worker_threads", worker_threads, 1)
        if workers not in WORKERS:
            raise ConfigError(f"rollout.workers {workers!r} is not one of {', '.join(WORKERS)}")
        require_int("rollout.num_workers", num_workers, 1)
        if workers != "ray" and (ray_address is not None or worker_resources):
            raise ConfigError("rollout.ray_address and rollout.worker_resources are for rollout.workers=ray")
        if lora_sync not in LORA_SYNCS:
            raise ConfigError(f"rollout.lora_sync {lora_sync!r} is not one of {', '.join(LORA_SYNCS)}")
        if lora_sync == "adapters" and engine not in ("auto", "native"):
            raise ConfigError("rollout.lora_sync=adapters keeps the adapters in the native engine's replica: it "
                              f"needs rollout.engine=native, not {engine}")  # fmt: skip
        self.lora_sync = lora_sync
        self.quantization = check_bits("rollout.quantization", quantization)
        if quantization is not None and (engine not in ("auto", "native") or async_ratio is not None or agent):
            raise ConfigError(
                "rollout.quantization holds the native engine's replica in 8 or 4 bits: it needs rollout.engine=native "
                "and the synchronous loop (no rollout.async_ratio, no rollout.agent)"
            )
        self.workers, self.wait_for_stragglers, self.num_workers = workers, wait_for_stragglers, num_workers
        self.ray_address, self.worker_resources = ray_address, dict(worker_resources or {})
        self.agent = agent_config(agent) if agent is not None else None
        if self.agent is not None and (async_ratio is not None or schedule != "batch"):
            raise ConfigError("rollout.agent runs its own multi-turn schedule: leave rollout.async_ratio and "
                              "rollout.schedule at their defaults")  # fmt: skip
        self.agent_sampler: AgentSampler | None = None
        self._restored_agent: dict | None = None
        self.async_ratio, self.worker_device, self.worker_threads = async_ratio, worker_device, worker_threads
        self.async_sampler: AsyncSampler | None = None
        self.schedule, self.extra_prompts, self.filter_groups = schedule, extra_prompts, filter_groups
        self.max_launched_prompts, self.max_running = max_launched_prompts, max_running
        self.queue_sampler: QueueSampler | None = None
        self._restored_queue: dict | None = None  # a checkpoint's queue state, loaded before setup
        self._restored_async: dict | None = None
        self.engine_name, self.sync_every = engine, sync_every
        self.engine_options = dict(engine_options or {})
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype is not None and dtype not in dtypes:
            raise ConfigError(f"rollout dtype {dtype!r} is not one of {', '.join(dtypes)}")
        self.dtype = dtypes[dtype] if dtype else None
        self.log_samples, self.log_samples_every = log_samples, log_samples_every
        self.engine: NativeEngine | None = None
        self.rollouts = 0
        self.synced_step = -1

    # -- lifecycle --------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.schedule == "queue" and stage == "fit":
            self.queue_sampler = QueueSampler(self, trainer)
            if self._restored_queue is not None:
                self.queue_sampler.load_state_dict(self._restored_queue)
        if self.async_ratio is not None and stage == "fit":
            if any(isinstance(c, Sampler) for c in trainer.callbacks):
                raise ConfigError(
                    "rollout.async_ratio runs its own sampler; it does not combine with sampler=tail_batching"
                )
            self.async_sampler = AsyncSampler(self, trainer)
            if self._restored_async is not None:
                self.async_sampler.load_state_dict(self._restored_async)

        if self.agent is not None and stage == "fit":
            self.agent_sampler = AgentSampler(self, trainer)
            if self._restored_agent is not None:
                self.agent_sampler.load_state_dict(self._restored_agent)

    @property
    def sampler(self) -> QueueSampler | AsyncSampler | AgentSampler | None:
        """The rollout's own sampler, if any: queue scheduling's, asynchronous rollout's or multi-turn agents'."""
        return self.queue_sampler or self.async_sampler or self.agent_sampler

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.build(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.async_sampler is not None:
            self.async_sampler.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is None:  # `zoo validate`: no fit, build it now
            self.build(pl_module)
        elif self.synced_step != trainer.global_step:  # evaluate the current policy, not a stale copy
            self.sync(pl_module, trainer.global_step)

    def build(self, pl_module: L.LightningModule) -> None:
        policy, tokenizer = pl_module.model, pl_module.trainer.datamodule.tokenizer
        options = self.engine_options
        if self.quantization is not None and options.get("decode", "auto") == "auto":
            options = {**options, "decode": "eager"}  # a sync replaces the quantized layers: no captured graphs
        self.engine_name = engine_for(policy.config, self.engine_name)
        if (self.async_ratio is not None or self.agent is not None) and self.engine_name != "native":
            raise ConfigError(f"rollout.async_ratio and rollout.agent need the native engine, not {self.engine_name}")
        if self.schedule == "queue" and self.engine_name == "hf":
            raise ConfigError(
                "rollout.schedule=queue needs a request-level engine (native for zoo's models, or vllm): the hf "
                "engine runs batches only; use rollout.schedule=batch"
            )
        dtype = self.dtype or next(policy.parameters()).dtype  # hf and vllm: by default the policy's own
        if self.engine_name == "native":
            self.engine = NativeEngine(self.replica(pl_module), tokenizer=tokenizer, dtype=self.dtype, **options)
        elif self.engine_name == "hf":
            from zoo.generation.hf import HFEngine

            self.engine = HFEngine(policy.config, tokenizer, device=pl_module.device, dtype=dtype, **options)
        else:
            from zoo.generation.vllm import VLLMEngine

            self.engine = VLLMEngine(policy.config, self.weights(pl_module), tokenizer, dtype=dtype, **options)
        self.sync(pl_module, step=pl_module.global_step)
        log.info("rollout: %s engine, weights synced every %d step(s)", self.engine_name, self.sync_every)

    def replica(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The native engine's private copy of the policy: the plain network, its weights loaded by the first sync,
        when the policy is sharded or is a LoRA policy served merged; else a copy (a LoRA policy's with its
        adapters, under ``lora_sync: adapters``)."""
        policy = pl_module.model
        sharded, lora = any(isinstance(p, DTensor) for p in policy.parameters()), has_lora(policy)
        if sharded and lora and self.lora_sync == "adapters":
            raise ConfigError("rollout.lora_sync=adapters copies the policy with its adapters: not a sharded one")
        if sharded or (lora and self.lora_sync == "merged") or self.quantization is not None:
            from zoo.models import build_model

            replica = build_model(policy.config).to(pl_module.device)
        else:
            replica = copy.deepcopy(policy)
        replica.requires_grad_(False)
        replica = replica.to(self.dtype) if self.dtype is not None else replica
        if self.quantization is not None:  # its weights come quantized afresh at every sync
            quantize_frozen(replica, self.quantization, "rollout.quantization")
        return replica

    def replica_weights(self, pl_module: L.LightningModule) -> tuple[dict[str, torch.Tensor], dict | None]:
        """What a rollout worker in another process builds its replica from: the weights of the network it
        holds, and the LoRA settings when that network keeps the policy's adapters (``lora_sync: adapters``: then
        its base too, once; the pushes bring the adapters alone)."""
        policy = pl_module.model
        # a thread worker's replica comes from replica(), in this process: it needs only what a sync sends
        if self.workers == "thread" or not (has_lora(policy) and self.lora_sync == "adapters"):
            return dict(self.weights(pl_module)), None
        if is_quantized(policy):
            raise ConfigError(
                "rollout.lora_sync=adapters with rollout.workers=process|ray sends the base once, in full precision: "
                "not a QLoRA base (model.lora.quantize); use rollout.lora_sync=merged"
            )
        return {name: _full(p.detach()) for name, p in policy.named_parameters()}, pl_module.lora.to_dict()

    def weights(self, pl_module: L.LightningModule):
        """The policy's named weights, whole (gathered when sharded): a LoRA policy's merged into the plain
        network's (:func:`zoo.training.lora.merged_weights`), or its adapters alone under ``lora_sync: adapters``."""
        policy = pl_module.model
        if not has_lora(policy):
            named = policy.named_parameters()
        elif self.lora_sync == "adapters":
            named = ((name, p) for name, p in policy.named_parameters() if p.requires_grad)
        else:
            named = merged_weights(policy)
        return ((name, _full(p.detach())) for name, p in named)

    def sync(self, pl_module: L.LightningModule, step: int) -> None:
        if self.quantization is not None:
            load_quantized(self.engine.model, self.weights(pl_module))
            self.engine.pool = None  # its layers are new modules: nothing captured may keep the old ones
        else:
            self.engine.load_weights(self.weights(pl_module))
        self.synced_step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.async_sampler is not None:
            self.async_sampler.push(pl_module)
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
        seconds = time.perf_counter() - start
        self.rollouts += 1
        self.log_generation(pl_module, result, seconds, log_prefix)
        return result

    def queue_round(
        self,
        module: L.LightningModule,
        problems: Sequence[dict],
        launch: Sequence[int],
        protected: Sequence[bool],
        n: int,
        complete_at: int,
        needed: int,
        more=None,
    ) -> tuple[Round, QueueOutcome]:
        """One queue-scheduled step (:func:`zoo.rollout.samplers.queue.run_queue_round`) with the module's sampling
        params and scorer: the :class:`Round` it trains (its rewards already computed) and the outcome."""
        start = time.perf_counter()
        outcome = run_queue_round(
            self.engine,
            problems,
            launch,
            protected,
            n,
            complete_at,
            needed,
            module.sampling_params(),
            module.submit_scores,
            self.engine.tokenizer,
            more=more,
            filter_groups=self.filter_groups,
            max_launched=self.max_launched_prompts,
            max_running=self.max_running,
        )
        seconds = time.perf_counter() - start
        self.rollouts += 1
        result = GenerationResult(outcome.samples, decode_steps=outcome.stats.decode_steps)
        result.generated_tokens = outcome.stats.generated_tokens
        launched = [problems[i] for i in outcome.launched]
        step = Round.from_generation(launched, result, self.engine.tokenizer, module.device)
        step.rewards = outcome.rewards
        self.log_generation(module, result, seconds, "rollout")
        self._log_queue(module, outcome.stats)
        return step, outcome

    def _log_queue(self, pl_module: L.LightningModule, stats: QueueStats) -> None:
        def mean(values) -> float:
            return sum(values) / len(values) if values else 0.0

        pl_module.log_dict(
            {
                "queue/occupancy": stats.occupancy,
                "queue/waiting": stats.waiting,
                "queue/aborted_requests": float(stats.aborted_requests),
                "queue/filtered_groups": float(stats.filtered_groups),
                "queue/filled_with_filtered": float(stats.filled_with_filtered),
                "queue/launched_prompts": float(stats.launched_prompts),
                "queue/reward_latency_s": mean(stats.reward_latency_s),
                "queue/trained_length_mean": mean(stats.trained_lengths),
                "queue/aborted_length_mean": mean(stats.aborted_lengths),
            }
        )

    def state_dict(self) -> dict:
        state = {"queue": self.queue_sampler.state_dict()} if self.queue_sampler is not None else {}
        if self.async_sampler is not None:
            state["async"] = self.async_sampler.state_dict()
        if self.agent_sampler is not None:
            state["agent"] = self.agent_sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:  # restored before setup: applied there
        if "queue" in state:
            if self.queue_sampler is None:
                self._restored_queue = state["queue"]
            else:
                self.queue_sampler.load_state_dict(state["queue"])
        if "async" in state:
            if self.async_sampler is None:
                self._restored_async = state["async"]
            else:
                self.async_sampler.load_state_dict(state["async"])
        if "agent" in state:
            if self.agent_sampler is None:
                self._restored_agent = state["agent"]
            else:
                self.agent_sampler.load_state_dict(state["agent"])

    def log_generation(self, pl_module: L.LightningModule, result: GenerationResult, seconds: float, prefix: str):
        """Log what a rollout generated under ``prefix``: tokens/s, lengths, finish reasons, a few texts."""
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
        tensorboard = next((lg for lg in pl_module.trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or not pl_module.trainer.is_global_zero:
            return
        step = pl_module.global_step
        tensorboard.experiment.add_histogram(f"{prefix}/lengths", lengths, step)
        if self.rollouts % self.log_samples_every == 1 or self.log_samples_every == 1:
            tokenizer = self.engine.tokenizer
            texts = [tokenizer.decode(s.token_ids) for s in result.samples[: self.log_samples]]
            tensorboard.experiment.add_text(f"{prefix}/samples", "\n\n---\n\n".join(f"`{t}`" for t in texts), step)


class QueueSampler(Sampler):
    """Plain queue scheduling's choice of prompts (no tail batching): the training prompts in the loader's seeded
    order (``zoo.text.loader.PromptStream``; the training loader then only paces the steps) through a
    :class:`zoo.rollout.samplers.queue.QueuePlanner`, whose returned prompts come first."""

    def __init__(self, callback: RolloutCallback, trainer) -> None:
        data = trainer.datamodule
        self.callback, self.problems = callback, data.train_set
        self.planner = QueuePlanner(data.hparams.batch_size, callback.extra_prompts)
        self.stream = PromptStream(len(self.problems), data.hparams.seed, trainer.global_rank, trainer.world_size)

    def next_round(self, module: L.LightningModule) -> Round:
        prompts, protected = self.planner.plan(self.stream.take)
        step, outcome = self.callback.queue_round(
            module,
            self.problems,
            prompts,
            protected,
            module.rollout_config.n,
            module.rollout_config.n,
            self.planner.prompts_per_step,
            more=lambda: self.stream.take(1, 1)[0],
        )
        self.planner.finish(outcome)
        module.log("queue/returned_prompts", float(len(self.planner.returned)))
        return step

    def state_dict(self) -> dict:
        return {"planner": self.planner.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.planner.load_state_dict(state["planner"])
        self.stream.load_state_dict(state["stream"])
