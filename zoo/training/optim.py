"""The optimizer, learning-rate schedule and divergence guard that zoo's training modules share.

AdamW with decoupled weight decay on matrices only (embeddings included; biases and norms excluded), a linear
warmup from 0 to the peak rate, then a cosine decay to ``min_lr_ratio`` of the peak at the last step.

``module.optim.name`` picks the implementation: ``adamw`` (torch's; fused on CUDA), ``adamw8bit`` or
``paged_adamw8bit`` (bitsandbytes, ``pip install 'zoo[bnb]'``: both moments held in 8 bits, block-wise quantized,
for every tensor of at least 4,096 elements, smaller ones in 32 bits; the paged one pages its state to host memory
under GPU memory pressure and runs unpaged on a CPU). All three save their state in the checkpoint and resume
exactly.

Every module calls :func:`ensure_finite` with a step's loss and gradient norm after the backward pass and
before the optimizer step: a non-finite value stops the run with :class:`TrainingDiverged` (one line naming the
step), so the weights, and every checkpoint written from them, stay those of the last finite step.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import nn

from zoo.errors import ConfigError, TrainingDiverged

log = logging.getLogger("zoo")


def ensure_finite(step: int, **values: torch.Tensor | float) -> None:
    """Raise :class:`TrainingDiverged` when any of ``values`` (e.g. ``loss=``, ``grad_norm=``) is NaN or inf."""
    scalars = [torch.as_tensor(v).detach().float().reshape(()) for v in values.values()]
    device = scalars[0].device
    if bool(torch.isfinite(torch.stack([x.to(device) for x in scalars])).all()):  # one device sync a step
        return
    bad = {name: float(x) for name, x in zip(values, scalars, strict=True) if not math.isfinite(float(x))}
    found = ", ".join(f"{name} is {value}" for name, value in bad.items())
    raise TrainingDiverged(
        f"training diverged at step {step}: {found}; the step was not applied, no checkpoint holds it (lower "
        "module.optim.lr, raise module.optim.warmup_steps or set module.optim.grad_clip)"
    )


OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adamw8bit | paged_adamw8bit (bitsandbytes)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; 0 or null disables clipping (the norm is still logged)

    @classmethod
    def from_dict(cls, values: dict | None) -> OptimConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown optimizer setting(s): {', '.join(unknown)}")
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """One line naming the first setting that cannot work."""
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"module.optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr >= 0):
            raise ConfigError(f"module.optim.lr must be a number >= 0, got {self.lr!r}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"module.optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        for key in ("eps", "weight_decay", "min_lr_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"module.optim.{key} must be >= 0, got {getattr(self, key)!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"module.optim.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"module.optim.grad_clip must be >= 0 or null, got {self.grad_clip!r}")


def adamw_groups(model: nn.Module, config: OptimConfig, lr: float | None = None) -> list[dict]:
    """``model``'s trainable parameters as AdamW groups: matrices decayed, vectors not; at ``lr`` if given."""
    params = [p for p in model.parameters() if p.requires_grad]
    rate = {} if lr is None else {"lr": lr}
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, **rate},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **rate},
    ]


def build_adamw(model: nn.Module | list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    """``config.name``'s AdamW over a model's parameters, or over parameter groups (:func:`adamw_groups` of several
    parts)."""
    groups = adamw_groups(model, config) if isinstance(model, nn.Module) else model
    if config.name == "adamw":
        on_cuda = any(p.is_cuda for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=on_cuda or None)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"module.optim.name={config.name} needs bitsandbytes: pip install 'zoo[bnb]'") from None
    cls = bnb.optim.AdamW8bit if config.name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    with warnings.catch_warnings():  # a paged optimizer on a CPU says it runs unpaged: the docstring says so
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        return cls(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def build_schedule(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine over a run of ``total_steps`` optimizer steps. A warmup as long as the run would never
    decay: it is then cut to a tenth of the run, and the log says so."""
    warmup = config.warmup_steps
    if 0 < total_steps <= warmup:
        warmup = total_steps // 10
        log.warning(
            "module.optim.warmup_steps=%d is not shorter than the run's %d steps: warming up over %d steps instead",
            config.warmup_steps,
            total_steps,
            warmup,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps, config.min_lr_ratio)
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
