"""PPO with a learned critic (Schulman et al. 2017; as applied to LMs by Ouyang et al. 2022): the RL base loop
with GAE advantages from a value model, and a clipped value loss beside the policy loss.

- The critic (``zoo.models.value.ValueModel``) is the policy's architecture with a scalar head, started from
  the policy's weights; it is optimised together with the policy, its loss weighted by ``vf_coef``.
- Token rewards: the task's reward on the last completion token; with ``kl_coef > 0``, minus
  ``kl_coef · (log π_old − log π_ref)`` on every completion token (the KL lives in the reward here, not in the
  loss as in GRPO).
- Advantages: GAE(γ, λ) over completion tokens, whitened over the batch; value targets: GAE's returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zoo.models.value import ValueModel
from zoo.modules.rl import RLModule, config_section
from zoo.rl.advantages import gae, masked_whiten
from zoo.rl.losses import clipped_value_loss
from zoo.rl.packing import per_position
from zoo.rl.rollout import RolloutBatch
from zoo.training.strategies import shard_for_strategy


@dataclass
class PPOConfig:
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    value_clip: float = 0.2


class PPOModule(RLModule):
    kl_in_loss = False

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
        algorithm: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        ppo: dict[str, Any] | None = None,
        credit: str = "none",
        credit_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optim, rollout, algorithm, evaluation, credit=credit, credit_options=credit_options)
        self.save_hyperparameters()
        self.ppo = config_section(PPOConfig, ppo, "module.ppo")
        self.critic: ValueModel | None = None

    def copy_policy(self, policy: torch.nn.Module) -> None:
        super().copy_policy(policy)
        self.critic = ValueModel.from_policy(policy)
        shard_for_strategy(self, self.critic)  # trained like the policy: sharded like it under FSDP2

    def trainable(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.model, self.critic])

    def prepare(self, batch: RolloutBatch) -> None:
        super().prepare(batch)
        if batch.old_logprobs is None:  # the KL penalty in the reward needs them even for a single update
            batch.old_logprobs = self.policy_logprobs(batch)
        batch.old_values = self.value_estimate(batch) * batch.response_mask

    def value_estimate(self, batch: RolloutBatch) -> torch.Tensor:
        """The values (N, L) GAE bootstraps from, before any update of this batch."""
        return self.micro_batched(batch, lambda part: per_position(self.critic, part.input_ids, self.packing(part)))

    def advantages(self, batch: RolloutBatch) -> torch.Tensor:
        mask = batch.response_mask
        last = mask.cumsum(1).argmax(1)  # target position of each completion's last token
        rewards = torch.zeros_like(mask)
        rewards[torch.arange(len(batch)), last] = batch.rewards
        if self.has_reference:
            rewards = rewards - self.algorithm.kl_coef * (batch.old_logprobs - batch.ref_logprobs) * mask
            self.log("policy/kl_to_reference", ((batch.old_logprobs - batch.ref_logprobs) * mask).sum() / mask.sum())
        advantages, batch.returns = gae(rewards, batch.old_values, mask, self.ppo.gamma, self.ppo.lam)
        return masked_whiten(advantages, mask)

    def loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy_loss, logs = super().loss(batch)
        value_loss, value_logs = self.value_loss(batch)
        return policy_loss + self.ppo.vf_coef * value_loss, {**logs, **value_logs}

    def value_loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's clipped value loss on a minibatch, and what to log about it."""
        values = per_position(self.critic, batch.input_ids, self.packing(batch))
        loss = clipped_value_loss(
            values,
            batch.old_values,
            batch.returns,
            batch.response_mask,
            self.ppo.value_clip,
            self.algorithm.aggregation,
            batch.total(),
        )
        return loss, {"critic/value_loss": loss.detach()}
