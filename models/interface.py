"""The interface every zoo model has and every module, loss, critic, strategy and engine depends on, instead of a
model class: zoo's own networks (``gpt_neox``, ``recursive``, ``mesh``) and any Hugging Face causal LM
(``hf``, :mod:`zoo.models.hf`) implement it.

What the rest of zoo builds on it:

- training: :func:`zoo.modules.pretrain.causal_lm_loss` calls ``forward`` with ``targets``;
- token log-probs and entropy of given sequences, padded or packed: :func:`zoo.rl.rollout.token_logprobs` (``forward``
  logits, or ``hidden_states`` and ``logits`` chunk by chunk);
- critics: :class:`zoo.models.value.ValueModel` reads ``hidden_states`` and ``lm_head``'s width;
- attention maps of chosen layers (attention-based credit, :mod:`zoo.rl.methods.attention_credit`): ``forward`` with an
  ``attention_probe`` (:mod:`zoo.models.attention_maps`), layers counted by ``num_attention_calls``;
- sharding: the strategies wrap each ``block_class`` module (:mod:`zoo.training.strategies`);
- weights for a rollout engine: ``named_parameters()`` under the model's own names, which the ``hf`` and
  ``vllm`` engines rename into transformers' names (:func:`zoo.generation.transformers_view`);
- the loop probes (:mod:`zoo.analysis.probes`) trace zoo's own networks, which are also :class:`Traceable`;
- the tokenizer, with its chat template, comes with the weights (the hub entry, the HF directory) and lives in
  the data module (:mod:`zoo.text.chat`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class CausalLM(Protocol):
    config: Any  # the config dataclass it was built from (``config.arch`` names the family)
    block_class: type[nn.Module] | tuple[type[nn.Module], ...]  # what FSDP and FSDP2 wrap one by one

    @property
    def embed(self) -> nn.Module: ...  # the input embedding

    @property
    def lm_head(self) -> nn.Module: ...  # the output projection (may be the embedding's weight, tied)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_probe: Any = None,
    ) -> torch.Tensor:
        """Logits (B, T, V); given ``targets`` (B, T; -100 ignored) their mean next-token cross-entropy.
        ``segment_ids`` with ``position_ids`` restarting per segment isolate examples packed into one row.
        ``attention_probe`` is shown the attention maps of the layers it asks for."""
        ...

    @property
    def num_attention_calls(self) -> int: ...  # attention calls in one forward (the layers a probe can ask for)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-normed hidden states (B, T, H); packed rows as in ``forward``."""
        ...


@runtime_checkable
class HeadOverHiddenStates(Protocol):
    """A model whose logits are exactly ``logits(hidden_states(input_ids))``, its output head applied position by
    position (zoo's own networks; a Hugging Face model may post-process its logits: soft-capping, scaling), so that
    per-token log-probs can be computed from the hidden states a chunk of tokens at a time
    (:func:`zoo.rl.rollout.token_logprobs`)."""

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Traceable(Protocol):
    """zoo's own networks: their blocks' states can be traced (Hugging Face models cannot)."""

    def trace(self, input_ids: torch.Tensor) -> Any:
        """Run the blocks on ``input_ids`` and record every state they pass through (a
        :class:`zoo.models.gpt_neox.StateTrace`)."""
        ...
