"""What the rollout engine holds of the policy, and what a weight sync sends it.

- The **replica**: the native engine's private copy of the policy. The plain network, its weights loaded by the
  first sync, when the policy is sharded or is a LoRA policy served merged, or when the replica is quantized; else a
  copy (a LoRA policy's with its adapters under ``lora_sync: adapters``). In ``dtype`` when one is given.
- A LoRA policy (``model.lora``, :mod:`zoo.training.lora`): ``lora_sync: merged`` (default) serves the merged weights
  ``W + (alpha / r) B A`` in the plain network, on every engine; ``adapters`` (the native engine, in this process or
  in asynchronous rollout's process and Ray workers, which receive the base once) keeps the adapters in the replica
  and syncs only them.
- ``quantization: 8bit | 4bit``: the replica held by bitsandbytes (:mod:`zoo.training.quantization`), quantized
  afresh from the policy's weights at every sync: the engine's log-probs then differ from the policy's by the
  quantization, which truncated importance sampling corrects.

The weights sent are whole tensors (gathered first when the policy is sharded), named as the policy names them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from zoo.errors import ConfigError
from zoo.generation.engine import Engine
from zoo.training.lora import has_lora, merged_weights
from zoo.training.quantization import check_bits, is_quantized, load_quantized, quantize_frozen

LORA_SYNCS = ("merged", "adapters")  # what a LoRA policy's engine samples from: merged weights, or base + adapters
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class WeightSync:
    def __init__(self, lora_sync: str = "merged", quantization: str | None = None, dtype: str | None = None) -> None:
        if lora_sync not in LORA_SYNCS:
            raise ConfigError(f"rollout.lora_sync {lora_sync!r} is not one of {', '.join(LORA_SYNCS)}")
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"rollout dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.lora_sync = lora_sync
        self.quantization = check_bits("rollout.quantization", quantization)
        self.dtype = DTYPES[dtype] if dtype else None

    def replica(self, module: L.LightningModule) -> torch.nn.Module:
        """The native engine's private copy of ``module``'s policy, on its device (see the module's docstring)."""
        policy = module.model
        sharded, lora = any(isinstance(p, DTensor) for p in policy.parameters()), has_lora(policy)
        if sharded and lora and self.lora_sync == "adapters":
            raise ConfigError("rollout.lora_sync=adapters copies the policy with its adapters: not a sharded one")
        if sharded or (lora and self.lora_sync == "merged") or self.quantization is not None:
            from zoo.models import build_model

            replica = build_model(policy.config).to(module.device)
        else:
            replica = copy.deepcopy(policy)
        replica.requires_grad_(False)
        replica = replica.to(self.dtype) if self.dtype is not None else replica
        if self.quantization is not None:  # its weights come quantized afresh at every sync
            quantize_frozen(replica, self.quantization, "rollout.quantization")
        return replica

    def weights(self, module: L.LightningModule) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's named weights, whole: a LoRA policy's merged into the plain network's
        (:func:`zoo.training.lora.merged_weights`), or its adapters alone under ``lora_sync: adapters``."""
        policy = module.model
        if not has_lora(policy):
            named = policy.named_parameters()
        elif self.lora_sync == "adapters":
            named = ((name, p) for name, p in policy.named_parameters() if p.requires_grad)
        else:
            named = merged_weights(policy)
        return ((name, _full(p.detach())) for name, p in named)

    def worker_weights(
        self, module: L.LightningModule, in_process: bool
    ) -> tuple[dict[str, torch.Tensor], dict | None]:
        """What a rollout worker builds its replica from: the weights of the network it holds, and the LoRA
        settings when that network keeps the policy's adapters (a worker in another process under ``lora_sync:
        adapters``: then its base too, once; the pushes bring the adapters alone). A worker ``in_process`` builds
        its replica with :meth:`replica`: it needs only what a sync sends."""
        policy = module.model
        if in_process or not (has_lora(policy) and self.lora_sync == "adapters"):
            return dict(self.weights(module)), None
        if is_quantized(policy):
            raise ConfigError(
                "rollout.lora_sync=adapters with rollout.workers=process|ray sends the base once, in full precision: "
                "not a QLoRA base (model.lora.quantize); use rollout.lora_sync=merged"
            )
        return {name: _full(p.detach()) for name, p in policy.named_parameters()}, module.lora.to_dict()

    def load(self, engine: Engine, module: L.LightningModule) -> None:
        """The policy's current weights into ``engine``."""
        if self.quantization is not None:
            load_quantized(engine.model, self.weights(module))
            engine.pool = None  # its layers are new modules: nothing captured may keep the old ones
        else:
            engine.load_weights(self.weights(module))
