"""Rollout engines behind one interface (ARCHITECTURE.md): ``generate(prompts, n, params,
finished_groups_quota=None) -> GenerationResult`` and ``load_weights(named tensors)`` with the policy's own
(zoo) parameter names.

- ``native``: :class:`zoo.generation.NativeEngine`, every zoo model, CPU and GPU (the default);
- ``hf``: :class:`zoo.engines.hf.HFEngine`, transformers' ``generate`` on the same weights (Pythia policies);
- ``vllm``: :class:`zoo.engines.vllm.VLLMEngine`, in the ``vllm`` extra, imported only when chosen.
"""

from __future__ import annotations

ENGINES = ("native", "hf", "vllm")
