"""Rollout engines behind one interface (ARCHITECTURE.md): ``generate(prompts, n, params,
finished_groups_quota=None) -> GenerationResult`` and ``load_weights(named tensors)`` with the policy's own
(zoo) parameter names.

- ``native``: :class:`zoo.generation.native.NativeEngine`, zoo's own models, CPU and GPU (the default for them);
- ``hf``: :class:`zoo.generation.hf.HFEngine`, transformers' ``generate``: Pythia and every Hugging Face policy
  (``arch: hf``; the default for them);
- ``vllm``: :class:`zoo.generation.vllm.VLLMEngine`, in the ``vllm`` extra, imported only when chosen: Pythia and
  every Hugging Face policy vLLM supports.

``auto`` picks ``native`` for zoo's models and ``hf`` for Hugging Face ones. The ``hf`` and ``vllm`` engines see a
policy through :func:`zoo.generation.transformers_view.transformers_view`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from zoo.errors import ConfigError
from zoo.generation.engine import Engine

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


def build_engine(
    name: str,
    config: Any,
    tokenizer: Any,
    *,
    replica: Callable[[], torch.nn.Module],
    weights: Callable[[], Iterable[tuple[str, torch.Tensor]]],
    device: torch.device,
    dtype: torch.dtype | None,
    options: dict[str, Any],
) -> Engine:
    """The engine ``name`` (``native``, ``hf`` or ``vllm``; :func:`engine_for` resolves ``auto``) for a policy of
    ``config``: the native engine runs on ``replica()`` (a private copy, in its own dtype unless ``dtype`` is
    given); ``hf`` builds its network on ``device``; vLLM starts from ``weights()``. ``hf`` and ``vllm`` run in
    ``dtype`` (float32 when None); ``options`` are the engine's own (native: ``decode``; vllm: ``vllm.LLM``'s)."""
    if name == "native":
        from zoo.generation.native import NativeEngine

        return NativeEngine(replica(), tokenizer=tokenizer, dtype=dtype, **options)
    if name == "hf":
        from zoo.generation.hf import HFEngine

        return HFEngine(config, tokenizer, device=device, dtype=dtype, **options)
    if name == "vllm":
        from zoo.generation.vllm import VLLMEngine

        return VLLMEngine(config, weights(), tokenizer, dtype=dtype, **options)
    raise ConfigError(f"rollout engine {name!r} is not available; engines: {', '.join(ENGINES)}")


def in_place_engine(model: Any, tokenizer: Any = None):
    """An engine that generates with ``model`` itself (no copy, no weight sync): evaluation of a live policy."""
    if getattr(model.config, "arch", None) == "hf":
        from zoo.generation.hf import HFEngine

        return HFEngine.around(model.hf, tokenizer)
    from zoo.generation.native import NativeEngine

    return NativeEngine(model, tokenizer)
