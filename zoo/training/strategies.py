"""Distributed strategies that every zoo module shares, built from ``configs/strategy/*.yaml``.

- ``auto``: Lightning's choice (one device: no wrapper).
- ``ddp``: replicated weights, gradients all-reduced (gloo on CPU, nccl on GPU).
- ``fsdp``: FSDP1 (``FullyShardedDataParallel``), one FSDP unit per transformer block. Needs CUDA.
- ``fsdp2``: per-parameter sharding with ``torch.distributed.fsdp.fully_shard``: each block, then the root,
  sharded over a data-parallel mesh of every process. Lightning runs it through ``ModelParallelStrategy``;
  it works on CPU with gloo as well as on GPUs, and saves a consolidated (full) checkpoint by default so that
  the hub and ``load_from_checkpoint`` read it like any other.

Blocks are zoo's transformer blocks (each model class's ``block_class``, ``zoo.models.ARCHITECTURES``) and
the decoder layers of Hugging Face models (``zoo.models.hf``, from their ``_no_split_modules``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.tensor import DTensor

from zoo.errors import ConfigError
from zoo.models import is_block

log = logging.getLogger("zoo")


def auto() -> str:
    return "auto"


def ddp(find_unused_parameters: bool = False, **kwargs: Any) -> DDPStrategy:
    return DDPStrategy(find_unused_parameters=find_unused_parameters, **kwargs)


def fsdp(
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    state_dict_type: Literal["full", "sharded"] = "full",
    **kwargs: Any,
) -> FSDPStrategy:
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    # asked when the model is wrapped (after ``configure_model`` built it), so HF decoder layers are known then
    blocks = functools.partial(lambda_auto_wrap_policy, lambda_fn=is_block)
    return FSDPStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        **kwargs,
    )


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every process in one data-parallel (sharding) group, no tensor parallelism.

    (Its ``"auto"`` sizes would instead make a 2-process run tensor-parallel with nothing sharded.)
    """

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def fsdp2(save_distributed_checkpoint: bool = False, **kwargs: Any) -> FSDP2Strategy:
    return FSDP2Strategy(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)


def shard_for_strategy(module: L.LightningModule, model: nn.Module) -> None:
    """Called from ``configure_model``: shards ``model`` block by block when the trainer runs FSDP2."""
    trainer = module._trainer
    if trainer is not None and isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
        from zoo.training.quantization import is_quantized

        if is_quantized(model) or (isinstance(trainer.strategy, FSDPStrategy) and is_quantized(module)):
            raise ConfigError(
                "bitsandbytes' quantized layers (model.lora.quantize, a quantized reference under FSDP1) are not "
                "sharded by strategy=fsdp or fsdp2 yet: use strategy=auto or ddp"
            )
    if trainer is None or not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    from torch.distributed.fsdp import fully_shard

    mesh = module.device_mesh["data_parallel"]
    blocks = [m for m in model.modules() if is_block(m)]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "fsdp2: %d blocks sharded over %d ranks; rank %d holds %d of %d parameters (%.1f%%)",
        len(blocks),
        mesh.size(),
        mesh.get_local_rank(),
        local,
        total,
        100 * local / total,
    )


def clip_grad_norm(strategy: L.pytorch.strategies.Strategy, model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (``inf``: only measure it); returns the norm before."""
    if isinstance(strategy, FSDPStrategy):
        # FSDP1 holds flat sharded gradients: only the wrapper knows the global norm.
        return strategy.model.clip_grad_norm_(max_norm)
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    if isinstance(norm, DTensor):  # FSDP2: the norm is reduced over the mesh on demand
        norm = norm.full_tensor()
    return norm
