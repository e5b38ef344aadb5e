"""LoRA and QLoRA policies through PEFT (``pip install 'zoo[lora]'``), for zoo's own models and Hugging Face ones.

``model.lora`` (SFT, pretraining and every RL module)::

    r: 8                 # the adapters' rank (0, the configs' default: no adapters, every weight trains)
    alpha: 16            # the update is scaled by alpha / r (PEFT's lora_alpha)
    dropout: 0.0         # dropout on the adapters' input
    target_modules: null # null: every linear layer inside the transformer blocks; or names (PEFT's rule: a module
                         # whose name is, or ends in ".", one of them), e.g. [qkv, attn.proj] for zoo's attention
    quantize: null       # 4bit | 8bit: QLoRA, the base's block linears in bitsandbytes (zoo.training.quantization)

The adapters are PEFT's own LoRA layers injected into the network (``peft.inject_adapter_in_model``: it wraps any
``nn.Module``), so the model keeps its interface (the fused loss, attention probes, the strategies' blocks) and
only the adapters train. Only linear layers inside the blocks may be targeted: the output head's weight is read
directly by the fused loss, and the embedding is not a linear layer.

- The rollout engines sample from the *merged* weights ``W + (alpha / r) B A`` (dequantized for QLoRA) under the
  model's plain names, so every engine (native, hf, vllm) serves a LoRA policy as it serves any other;
  ``rollout.lora_sync: adapters`` instead keeps the adapters in the native engine's replica and sends only them
  at each sync (r (d_in + d_out) numbers per layer instead of d_in d_out, and no merge: a cheaper sync; the decode
  pays the adapters' two extra matmuls per layer).
- An RL module's KL reference of a LoRA policy is the policy with its adapters off (no copy of the network).
- Checkpoints of a run started from ``model.init_from`` hold the adapters (and any other trainable tensor) only:
  the frozen base is rebuilt from the entry it came from; a resumed run continues exactly.
- The hub stores a LoRA run as an adapter entry naming its base entry and that entry's manifest sha256, and
  ``zoo hub merge`` turns it into a full entry (:mod:`zoo.hub.store`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError, config_section, require_int
from zoo.training.quantization import check_bits, dequantized_weight, quantize_frozen

ADAPTER = "default"  # PEFT's adapter name (one adapter per model)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    quantize: str | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lora_settings(values: dict[str, Any] | None, key: str = "model.lora") -> LoraSettings | None:
    """The settings of ``model.lora`` (None when it is absent, null or has ``r: 0``: no adapters); a bad value is a
    one-line error naming it."""
    if not values:
        return None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key} must be a mapping such as {{r: 8, alpha: 16}}, got {values!r}")
    settings = config_section(LoraSettings, dict(values), key)
    require_int(f"{key}.r", settings.r, 0)
    if settings.r == 0:
        if settings.quantize is not None:
            raise ConfigError(f"{key}.quantize (QLoRA) needs adapters to train: set {key}.r > 0")
        return None
    if isinstance(settings.alpha, bool) or not isinstance(settings.alpha, int | float) or not settings.alpha > 0:
        raise ConfigError(f"{key}.alpha must be a number > 0, got {settings.alpha!r}")
    if not isinstance(settings.dropout, int | float) or not 0 <= settings.dropout < 1:
        raise ConfigError(f"{key}.dropout must lie in [0, 1), got {settings.dropout!r}")
    targets = settings.target_modules
    if targets is not None:
        if isinstance(targets, str):
            targets = [targets]
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"{key}.target_modules must be null or a list of module names, got {targets!r}")
        settings.target_modules = list(targets)
    check_bits(f"{key}.quantize", settings.quantize)
    return settings


def _peft(key: str):
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{key} needs PEFT: pip install 'zoo[lora]'") from None
    return peft


def block_linears(model: nn.Module) -> list[str]:
    """The full names of the linear layers inside ``model``'s transformer blocks."""
    from zoo.models import is_block

    names = []
    for block_name, block in model.named_modules():
        if is_block(block):
            names += [f"{block_name}.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    return names


def _targets(model: nn.Module, settings: LoraSettings, key: str) -> list[str]:
    linears = block_linears(model)
    if settings.target_modules is None:
        return linears
    chosen = []
    for target in settings.target_modules:
        matches = [n for n in linears if n == target or n.endswith("." + target)]
        if not matches:
            names = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ConfigError(
                f"{key}.target_modules: {target!r} names no linear layer inside the model's blocks "
                f"(those are named {', '.join(names)})"
            )
        chosen += [n for n in matches if n not in chosen]
    return chosen


def apply_lora(model: nn.Module, settings: LoraSettings, key: str = "model.lora") -> nn.Module:
    """``model`` with LoRA adapters injected in place (B = 0: it computes what it computed before), every other
    parameter frozen; with ``settings.quantize`` the block linears are quantized first (QLoRA)."""
    peft = _peft(key)
    targets = _targets(model, settings, key)
    if settings.quantize is not None:
        quantize_frozen(model, settings.quantize, f"{key}.quantize").train()
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets
    )
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT's LoRA layers of ``model`` by module name (empty for a model without adapters)."""
    return {name: m for name, m in model.named_modules() if _is_lora_layer(m)}


def _is_lora_layer(module: nn.Module) -> bool:  # without importing PEFT: most models have no adapters
    return type(module).__module__.startswith("peft.tuners.lora") and hasattr(module, "get_delta_weight")


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


@contextmanager
def adapters_disabled(model: nn.Module):
    """``model`` computing as its base (the LoRA adapters off) inside the block."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of the plain network that computes what ``model`` (with adapters, possibly quantized) computes,
    under the plain network's names: ``W + scaling B A`` for every adapted layer (its base dequantized), quantized
    layers dequantized, everything else as it is."""
    from zoo.training.quantization import is_quantized

    layers = lora_layers(model)
    quantized = {name: m for name, m in model.named_modules() if is_quantized(m) and not list(m.children())}
    for name, parameter in model.named_parameters():
        if ".base_layer." in name or ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner in quantized and leaf == "weight":
            yield name, dequantized_weight(quantized[owner])
        else:
            yield name, parameter.detach()
    with torch.no_grad():
        for name, layer in layers.items():
            base = layer.get_base_layer()
            a, b = _whole(layer.lora_A[ADAPTER].weight), _whole(layer.lora_B[ADAPTER].weight)
            weight = _whole(dequantized_weight(base)).to(a.dtype)
            yield f"{name}.weight", torch.addmm(weight, b, a, alpha=layer.scaling[ADAPTER])  # one fused kernel
            if base.bias is not None:
                yield f"{name}.bias", base.bias.detach()


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whole: a sharded one (FSDP2's DTensor) gathered."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def saved_adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a LoRA network's state dict, by PEFT's saved names (``<module>.lora_A.weight``: without the
    adapter's name)."""
    return {k.replace(f".{ADAPTER}.", "."): v for k, v in state.items() if ".lora_" in k}


def merge_adapters(
    base: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], scaling: float
) -> dict[str, torch.Tensor]:
    """A plain state dict: ``base`` (plain names) with each adapted weight replaced by ``W + scaling B A``;
    ``adapters`` by PEFT's saved names. Computed in float32, stored in the base weight's dtype."""
    merged = dict(base)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in adapters if ".lora_A." in k})
    for module in modules:
        a, b = adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"]
        weight = base.get(f"{module}.weight")
        if weight is None:
            raise ConfigError(f"an adapter for {module} has no {module}.weight in its base")
        merged[f"{module}.weight"] = (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)
    return merged


def check_lora_start(settings: LoraSettings | None, init_from: str | None, key: str = "model.lora") -> None:
    """QLoRA adapts a trained model: a quantized random base could be neither useful nor checkpointed."""
    if settings is not None and settings.quantize is not None and not init_from:
        raise ConfigError(f"{key}.quantize (QLoRA) needs model.init_from: the trained model whose base it quantizes")


def frozen_base_rebuilt(settings: LoraSettings | None, init_from: str | None) -> bool:
    """Whether a LoRA policy's checkpoints leave out its frozen base (rebuilt from ``init_from`` at load)."""
    return settings is not None and bool(init_from)


def frozen_entries(model: nn.Module, prefix: str) -> set[str]:
    """The state-dict keys (under ``prefix``) of ``model``'s frozen tensors: everything but its trainable
    parameters."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {prefix + k for k in model.state_dict() if k not in trainable}
