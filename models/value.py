"""A critic for PPO: a causal LM's body with a scalar head, one value per position (the value of the state
that ends with that token). The body is any zoo model, a Hugging Face one included (``zoo.models.hf``);
``from_policy`` starts it from a policy's weights, the usual PPO initialisation. The body's output head is
unused and frozen, unless it is tied to the input embedding, which the body needs."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ValueModel(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        head = body.lm_head.weight
        if sum(p is head for _, p in body.named_parameters(remove_duplicate=False)) == 1:
            body.lm_head.requires_grad_(False)
        self.head = nn.Linear(head.shape[1], 1, dtype=head.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> ValueModel:
        return cls(copy.deepcopy(policy))

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values (B, T) of the prefixes ending at each position (packed rows: ``segment_ids`` and
        ``position_ids`` restarting per sequence, as the body's forward takes them)."""
        hidden = self.body.hidden_states(input_ids, position_ids=position_ids, segment_ids=segment_ids)
        return self.head(hidden).squeeze(-1)
