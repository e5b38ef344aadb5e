"""Attention maps out of a forward pass, for the layers asked for only.

The models' attention runs through sdpa (fused kernels that never materialise the maps). A forward given an
:class:`AttentionProbe` (``model(input_ids, attention_probe=probe)``, every zoo model and ``arch: hf``) also
computes, for each attention call in ``probe.layers``, the row-stochastic map ``softmax(q kᵀ / √d + mask)``
(B, H, T, T) in fp32 and hands it to ``probe.observe(layer, probabilities)`` at once, so a probe reduces each
map to what it needs before the next layer runs and no pass ever holds the maps of every layer. The forward's
own outputs are those of the normal path (sdpa still computes them); without a probe nothing changes.

Layers are attention calls in the order the forward makes them: for a recursive or MeSH model that is the
unrolled graph (a core block applied twice is two layers), for a Hugging Face model its decoder layers.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AttentionProbe(Protocol):
    layers: frozenset[int]  # attention calls whose maps it receives

    def observe(self, layer: int, probabilities: torch.Tensor) -> None:
        """``probabilities`` (B, H, T_query, T_key): attention call ``layer``'s map, fp32, rows summing to 1."""
        ...


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The map sdpa applies to ``q``, ``k`` (B, H, T, D) and ``mask`` (boolean or additive, broadcast to
    (B, H, T, S); None: causal), in fp32."""
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is None:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


def middle_layers(num_layers: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced layers of the middle third, ⌊L/3⌋ … ⌊2L/3⌋ (the attention-credit paper's choice;
    fewer when the third holds fewer)."""
    low, high = num_layers // 3, min((2 * num_layers) // 3, num_layers - 1)
    if count <= 1:
        return [(low + high) // 2]
    return sorted({round(low + i * (high - low) / (count - 1)) for i in range(count)})


class MapRecorder:
    """A probe that keeps every map it is shown (B, H, T, T per layer): for tests and small analyses only."""

    def __init__(self, layers) -> None:
        self.layers = frozenset(layers)
        self.maps: dict[int, torch.Tensor] = {}

    def observe(self, layer: int, probabilities: torch.Tensor) -> None:
        self.maps[layer] = probabilities
