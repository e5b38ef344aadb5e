"""zoo's models: plain ``nn.Module``s, each built from its config dataclass; and any Hugging Face causal LM
behind the same interface (``arch: hf``, :mod:`zoo.models.hf`).

``build_model(config)`` and ``config_from_dict(d)`` are how the rest of zoo (modules, hub, CLI) reaches them;
a config dict names its architecture under ``arch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from zoo.errors import ConfigError
from zoo.models import gpt_neox, mesh, recursive
from zoo.models.gpt_neox import GPTNeoX, GPTNeoXConfig
from zoo.models.hf import DECODER_LAYER_CLASSES, HFCausalLM, HFConfig
from zoo.models.interface import CausalLM
from zoo.models.llama import Llama, LlamaConfig
from zoo.models.mesh import MeSH, MeSHConfig
from zoo.models.recursive import RecursiveConfig, RecursiveGPTNeoX

ARCHITECTURES: dict[str, type[nn.Module]] = {
    GPTNeoXConfig.arch: GPTNeoX,
    RecursiveConfig.arch: RecursiveGPTNeoX,
    MeSHConfig.arch: MeSH,
    LlamaConfig.arch: Llama,
    HFConfig.arch: HFCausalLM,
}
# Named configurations from the papers (``zoo fit model=NAME``), every family's together.
PRESETS = {**gpt_neox.PRESETS, **recursive.PRESETS, **mesh.PRESETS}


def block_classes() -> set[type[nn.Module]]:
    """zoo's block classes, and the decoder-layer classes of the HF models built so far in this process: what
    FSDP wraps, LoRA targets and quantization replaces, one block at a time."""
    zoo_blocks = {c.block_class for c in ARCHITECTURES.values() if isinstance(c.block_class, type)}
    return zoo_blocks | DECODER_LAYER_CLASSES


def is_block(module: nn.Module) -> bool:
    return isinstance(module, tuple(block_classes()))


def config_from_dict(values: Mapping[str, Any]):
    """Build the config dataclass named by ``values['arch']``; unknown fields are an error naming them."""
    values = dict(values)
    arch = values.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown model arch {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    config_class = ARCHITECTURES[arch].config_class
    unknown = sorted(set(values) - config_class.field_names())
    if unknown:
        raise ConfigError(f"unknown field(s) for model arch {arch!r}: {', '.join(unknown)}")
    return config_class(**values)


def build_model(config) -> nn.Module:
    return ARCHITECTURES[config.arch](config)


__all__ = [
    "ARCHITECTURES",
    "CausalLM",
    "GPTNeoX",
    "GPTNeoXConfig",
    "HFCausalLM",
    "HFConfig",
    "Llama",
    "LlamaConfig",
    "MeSH",
    "MeSHConfig",
    "PRESETS",
    "RecursiveConfig",
    "RecursiveGPTNeoX",
    "build_model",
    "config_from_dict",
]
