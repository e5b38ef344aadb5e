"""A policy as the ``hf`` and ``vllm`` engines see it: its architecture in transformers' terms and the renaming of
its (zoo-named) weights into transformers' names."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from zoo.errors import ConfigError

Renaming = Callable[[Iterable[tuple[str, torch.Tensor]]], dict[str, torch.Tensor]]


def transformers_view(config: Any, engine: str) -> tuple[Any, Renaming]:
    """A policy's architecture as a transformers config, and the function that renames its (zoo-named) weights
    into transformers' names."""
    arch = getattr(config, "arch", None)
    if arch in ("gpt_neox", "llama"):
        from transformers import AutoConfig

        from zoo.hub.convert import config_to_hf, state_dict_to_hf

        values = {k: v for k, v in config_to_hf(config).items() if k not in ("torch_dtype", "architectures")}
        architecture = AutoConfig.for_model(values.pop("model_type"), **values)
        return architecture, lambda weights: state_dict_to_hf(dict(weights), config)
    if arch == "hf":
        from zoo.models.hf import transformers_config

        return transformers_config(config.path), lambda weights: {n.removeprefix("hf."): t for n, t in weights}
    raise ConfigError(
        f"the {engine} engine serves Pythia (gpt_neox), the Llama family (llama) and Hugging Face (hf) policies, "
        f"not {arch!r}: use native"
    )
