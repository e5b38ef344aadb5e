"""Rollout engines behind one interface (ARCHITECTURE.md): ``generate(prompts, n, params,
finished_groups_quota=None) -> GenerationResult`` and ``load_weights(named tensors)`` with the policy's own
(zoo) parameter names.

- ``native``: :class:`zoo.generation.NativeEngine`, zoo's own models, CPU and GPU (the default for them);
- ``hf``: :class:`zoo.engines.hf.HFEngine`, transformers' ``generate``: Pythia and every Hugging Face policy
  (``arch: hf``; the default for them);
- ``vllm``: :class:`zoo.engines.vllm.VLLMEngine`, in the ``vllm`` extra, imported only when chosen: Pythia and
  every Hugging Face policy vLLM supports.

``auto`` picks ``native`` for zoo's models and ``hf`` for Hugging Face ones. The ``hf`` and ``vllm`` engines see a
policy through :func:`transformers_view`: its architecture in transformers' terms and the renaming of its
weights into transformers' names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from zoo.errors import ConfigError

ENGINES = ("auto", "native", "hf", "vllm")


def engine_for(config: Any, engine: str) -> str:
    """The engine that serves a policy of ``config``: ``engine``, or for ``auto`` the one that suits it; one line
    when the choice cannot serve it."""
    arch = getattr(config, "arch", None)
    if engine == "auto":
        return "hf" if arch == "hf" else "native"
    if engine == "native" and arch == "hf":
        raise ConfigError(
            "the native engine serves zoo's own models, not a Hugging Face (arch hf) policy: "
            "use rollout=hf (or rollout=vllm on a GPU)"
        )
    return engine


Renaming = Callable[[Iterable[tuple[str, torch.Tensor]]], dict[str, torch.Tensor]]


def transformers_view(config: Any, engine: str) -> tuple[Any, Renaming]:
    """A policy's architecture as a transformers config, and the function that renames its (zoo-named) weights
    into transformers' names."""
    arch = getattr(config, "arch", None)
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        from zoo.convert import gpt_neox_config_to_hf, gpt_neox_state_dict_to_hf

        values = {k: v for k, v in gpt_neox_config_to_hf(config).items() if k != "torch_dtype"}
        return GPTNeoXConfig(**values), lambda weights: gpt_neox_state_dict_to_hf(dict(weights))
    if arch == "hf":
        from zoo.models.hf import transformers_config

        return transformers_config(config.path), lambda weights: {n.removeprefix("hf."): t for n, t in weights}
    raise ConfigError(
        f"the {engine} engine serves Pythia (gpt_neox) and Hugging Face (hf) policies, not {arch!r}: use native"
    )


def in_place_engine(model: Any, tokenizer: Any = None):
    """An engine that generates with ``model`` itself (no copy, no weight sync): evaluation of a live policy."""
    if getattr(model.config, "arch", None) == "hf":
        from zoo.engines.hf import HFEngine

        return HFEngine.serving(model.hf, tokenizer)
    from zoo.generation import NativeEngine

    return NativeEngine(model, tokenizer)
