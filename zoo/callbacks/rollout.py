"""The rollout callback: owns the rollout engine, serves the RL module's generation requests, keeps the engine's
weights in step with the policy, and logs what was generated.

- ``engine: auto`` (default): ``native`` for zoo's models, ``hf`` for Hugging Face ones;
  ``engine: native``: :class:`zoo.generation.NativeEngine` on a private copy of the policy (every zoo
  model, CPU and GPU; CUDA graphs on a GPU), optionally in ``dtype`` (e.g. bf16 on a GPU; the ``hf`` and ``vllm``
  engines default to the policy's dtype);
  ``engine: hf``: transformers' ``generate`` on the same weights (:mod:`zoo.engines.hf`);
  ``engine: vllm``: vLLM (:mod:`zoo.engines.vllm`, the ``vllm`` extra). ``engine_options`` go to the engine
  (native: ``decode``; vllm: ``vllm.LLM`` arguments such as ``gpu_memory_utilization``).
- After every ``sync_every`` optimizer steps the policy's weights are copied into the engine (gathered first
  when the policy is sharded); in between the engine samples from a slightly older policy, which the RL
  losses can correct with truncated importance sampling.
- Logged per rollout: generated tokens/s, mean and max completion length, the share of each finish reason, a
  histogram of completion lengths and, every ``log_samples_every`` rollouts, a few sampled texts.
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

from zoo.engines import ENGINES, engine_for
from zoo.errors import ConfigError
from zoo.generation import GenerationResult, NativeEngine, SamplingParams

log = logging.getLogger("zoo")


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
    ) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"rollout engine {engine!r} is not available; engines: {', '.join(ENGINES)}")
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
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.build(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is None:  # `zoo validate`: no fit, build it now
            self.build(pl_module)
        elif self.synced_step != trainer.global_step:  # evaluate the current policy, not a stale copy
            self.sync(pl_module, trainer.global_step)

    def build(self, pl_module: L.LightningModule) -> None:
        policy, tokenizer = pl_module.model, pl_module.trainer.datamodule.tokenizer
        options = self.engine_options
        self.engine_name = engine_for(policy.config, self.engine_name)
        dtype = self.dtype or next(policy.parameters()).dtype  # hf and vllm: by default the policy's own
        if self.engine_name == "native":
            self.engine = NativeEngine(self._replica(pl_module), tokenizer=tokenizer, dtype=self.dtype, **options)
        elif self.engine_name == "hf":
            from zoo.engines.hf import HFEngine

            self.engine = HFEngine(policy.config, tokenizer, device=pl_module.device, dtype=dtype, **options)
        else:
            from zoo.engines.vllm import VLLMEngine

            weights = ((name, _full(p.detach())) for name, p in policy.named_parameters())
            self.engine = VLLMEngine(policy.config, weights, tokenizer, dtype=dtype, **options)
        self.sync(pl_module, step=pl_module.global_step)
        log.info("rollout: %s engine, weights synced every %d step(s)", self.engine_name, self.sync_every)

    def _replica(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The native engine's private copy of the policy (rebuilt whole when the policy is sharded)."""
        policy = pl_module.model
        if any(isinstance(p, DTensor) for p in policy.parameters()):
            from zoo.models import build_model

            replica = build_model(policy.config).to(pl_module.device)
        else:
            replica = copy.deepcopy(policy)
        replica.requires_grad_(False)
        return replica.to(self.dtype) if self.dtype is not None else replica

    def sync(self, pl_module: L.LightningModule, step: int) -> None:
        self.engine.load_weights((name, _full(p.detach())) for name, p in pl_module.model.named_parameters())
        self.synced_step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
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
        self._log(pl_module, result, seconds, log_prefix)
        return result

    def _log(self, pl_module: L.LightningModule, result: GenerationResult, seconds: float, prefix: str) -> None:
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
