"""A critic for PPO: a causal LM's body with a scalar head, one value per position (the value of the state
that ends with that token). The body is any zoo architecture, built from its config; ``from_policy`` starts it
from a policy's weights, the usual PPO initialisation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ValueModel(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.body.lm_head.requires_grad_(False)  # the body's output head is not used
        self.head = nn.Linear(body.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> ValueModel:
        return cls(copy.deepcopy(policy))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Values (B, T) of the prefixes ending at each position."""
        return self.head(self.body.hidden_states(input_ids)).squeeze(-1)
