"""Attention maps out of a forward pass, for the layers asked for only.

The models' attention runs through sdpa (fused kernels that never materialise the maps). A forward given an
:class:`AttentionProbe` (``model(input_ids, attention_probe=probe)``, every zoo model and ``arch: hf``) also
computes, for each attention call in ``probe.layers``, the row-stochastic map ``softmax(q kᵀ / √d + mask)``
(B, H, T, T) in fp32 and hands it to ``probe.observe(layer, probabilities)`` at once (:func:`show_maps`: in chunks
of ``probe.heads_per_map`` heads when the probe sets it), so a probe reduces each map to what it needs before the
next chunk is computed and no pass ever holds more than one chunk's maps. The forward's
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
        """``probabilities`` (B, h, T_query, T_key): attention call ``layer``'s map, fp32, rows summing to 1, for
        all of its heads or, when the probe sets ``heads_per_map``, the next chunk of them in head order."""
        ...


# fp32 tensors the size of one head chunk's maps alive at once while :func:`show_maps` computes and a probe reduces
# them: the scores, their masked copy or softmax, and one reduction's temporary
MAP_COPIES = 3


def show_maps(
    probe: AttentionProbe,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None = None,
) -> None:
    """Show ``probe`` attention call ``layer``'s map of ``q`` (B, H, T, D) over ``k`` (B, H_kv, S, D; a key head
    serves H / H_kv query heads), ``probe.heads_per_map`` query heads at a time when it sets that (in head order:
    a probe gets every head of a layer before the next layer), so that no more than a chunk's maps exist at once."""
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    step = getattr(probe, "heads_per_map", None) or heads
    for start in range(0, heads, step):
        chosen = torch.arange(start, min(start + step, heads), device=q.device)
        keys = k if group == 1 and step == heads else k.index_select(1, chosen // group)
        probe.observe(layer, attention_probabilities(q[:, start : start + step], keys, mask, scale))


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """The map sdpa applies to ``q``, ``k`` (B, H, T, D) and ``mask`` (boolean or additive, broadcast to
    (B, H, T, S); None: causal), in fp32; ``scale`` defaults to 1/√D."""
    scores = q.float() @ k.float().transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
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
        previous = self.maps.get(layer)
        self.maps[layer] = probabilities if previous is None else torch.cat([previous, probabilities], 1)
