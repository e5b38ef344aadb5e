"""AsyPPO (Liu et al. 2025, arXiv:2510.01656; spec: ../shared/papers notes §2): PPO whose critic is an ensemble of
M lightweight mini-critics, each trained on its own disjoint shard of the samples, with two uses of their
disagreement σ (the standard deviation of their values per token). Only PPO's stages change:

- value estimate: every critic's values (kept in the batch), their mean (``aggregate: min`` takes the minimum)
  is V̄, which GAE bootstraps from; the value targets are GAE's returns on V̄;
- loss: the policy-gradient term is dropped on the tokens whose σ is in the lowest ``advantage_mask`` fraction
  (the critics agree: little to learn there) and the entropy bonus skips those in the highest
  ``entropy_filter`` fraction (the critics disagree: exploring there is noise); the fractions are quantiles of σ
  over the valid tokens of the minibatch (``mask_population: batch``: of the whole rollout batch), see
  ``zoo.rl.methods.asyppo``. The per-token normaliser stays the completion's length: masked tokens add zero;
- value loss: each critic's clipped value loss on its own shard only (``shard_mode``), summed over critics;
- the first ``critic_warmup_steps`` optimizer steps train the critics alone; ``critic_lr`` sets their learning
  rate (default: the policy's).

Ablations of the paper's experiments: ``shard_mode: shared`` trains every critic on every sample;
``mask_kind: random`` masks the same fractions of tokens chosen at random (seeded by the step) instead of by σ.

The critics (``critic_model``): ``null`` copies the policy (architecture and weights, as PPO does); otherwise
overrides of the policy's model settings (e.g. a narrower, shallower Pythia, built from scratch) or another
model's settings (``arch: hf`` with a ``path``), optionally ``init_from: hub:NAME``. Each critic is built in turn,
so critics built from scratch start apart. A critic reads the policy's tokens: its embedding holds every id of the
policy's tokenizer (padding rows past it may differ), and a critic that comes with a tokenizer has the policy's.
With a Hugging Face policy the default narrow-Pythia overrides do not apply: the module says in one line to set
``critic_model: {arch: hf, path: DIR}`` (the paper: Qwen3-0.6B critics for a Qwen3-8B policy) or ``null``.

Choices where the paper is silent: σ is the population standard deviation (divisor M) of the pre-update values
computed with the rollout; each critic's clipped value loss uses its own pre-update values; GAE uses V̄ for
every critic. With M = 1 and both fractions 0 this is PPO, step for step (test).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from zoo.errors import ConfigError, require_int
from zoo.hub.store import build_initialized, starting_point
from zoo.models import config_from_dict
from zoo.models.hf import HFConfig
from zoo.models.value import ValueModel
from zoo.modules.ppo import PPOModule
from zoo.modules.rl import config_section
from zoo.rl.losses import Totals, clipped_value_loss, token_share
from zoo.rl.methods.asyppo import (
    AGGREGATES,
    EVERY_CRITIC,
    SHARD_MODES,
    critic_shards,
    ensemble_values,
    uncertainty_masks,
)
from zoo.rl.packing import per_position
from zoo.rl.rollout import RolloutBatch
from zoo.training.loggers import log_histogram
from zoo.training.optim import adamw_groups
from zoo.training.strategies import shard_for_strategy

POPULATIONS = ("minibatch", "batch")
MASK_KINDS = ("sigma", "random")


@dataclass
class AsyPPOConfig:
    critics: int = 2  # M
    critic_model: dict | None = None  # each critic's network; null: a copy of the policy
    shard_mode: str = "responses_within_prompt"  # | whole_prompts | shared (every critic on every sample: ablation)
    aggregate: str = "mean"  # | min
    advantage_mask: float = 0.2  # k: no policy gradient on the lowest-σ fraction of tokens
    mask_kind: str = "sigma"  # | random: the same fraction of tokens drawn at random (ablation)
    entropy_filter: float = 0.2  # h: no entropy bonus on the highest-σ fraction
    mask_population: str = "minibatch"  # | batch
    critic_warmup_steps: int = 0
    critic_lr: float | None = None


def critic_tokenizer(config: Any, init_from: str | None) -> Any:
    """The tokenizer a critic's network comes with, where it has one: its hub entry's or its Hugging Face
    directory's (None: built from the policy's settings, or no tokenizer files)."""
    from transformers import AutoTokenizer

    source = init_from if init_from is not None else config.path if config.arch == "hf" else None
    directory = starting_point(source)[1] if source is not None else None
    return AutoTokenizer.from_pretrained(directory) if directory is not None else None


class AsyPPOModule(PPOModule):
    logs_entropy = True

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
        algorithm: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        ppo: dict[str, Any] | None = None,
        asyppo: dict[str, Any] | None = None,
        credit: str = "none",
        credit_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            model, optim, rollout, algorithm, evaluation, ppo, credit=credit, credit_options=credit_options
        )
        self.save_hyperparameters()
        a = self.asyppo = config_section(AsyPPOConfig, asyppo, "module.asyppo")
        require_int("module.asyppo.critics", a.critics, 1)
        require_int("module.asyppo.critic_warmup_steps", a.critic_warmup_steps, 0)
        for key, value, allowed in (
            ("shard_mode", a.shard_mode, SHARD_MODES),
            ("mask_kind", a.mask_kind, MASK_KINDS),
            ("aggregate", a.aggregate, AGGREGATES),
            ("mask_population", a.mask_population, POPULATIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"module.asyppo.{key} {value!r} is not one of {', '.join(allowed)}")
        for key in ("advantage_mask", "entropy_filter"):
            if not 0 <= getattr(a, key) < 1:
                raise ConfigError(f"module.asyppo.{key} must lie in [0, 1), got {getattr(a, key)!r}")
        if a.critic_lr is not None and not a.critic_lr > 0:
            raise ConfigError(f"module.asyppo.critic_lr must be > 0, got {a.critic_lr!r}")
        self.check_critic_settings()
        self.critics: torch.nn.ModuleList | None = None

    # -- the critics ----------------------------------------------------------------------------------------
    def check_critic_settings(self) -> None:
        """Overrides of zoo's own model settings (the config's default narrow critic) cannot apply to a Hugging Face
        policy: say at once what to set instead."""
        spec = self.asyppo.critic_model
        if spec is None or self.model_config.arch != "hf" or "arch" in spec:
            return
        foreign = sorted(set(spec) - HFConfig.field_names() - {"init_from"})
        if foreign:
            raise ConfigError(
                f"module.asyppo.critic_model sets {', '.join(foreign)}, settings of zoo's own models that a Hugging "
                "Face policy does not have: replace them with '~module.asyppo.critic_model' "
                "'+module.asyppo.critic_model={arch: hf, path: DIR}' (a small model with the policy's tokenizer, as "
                "the paper's Qwen3-0.6B critics) or set module.asyppo.critic_model=null (copies of the policy)"
            )

    def copy_policy(self, policy: torch.nn.Module) -> None:
        super(PPOModule, self).copy_policy(policy)  # the reference; the critics replace PPO's single critic
        self.critics = torch.nn.ModuleList(self.build_critic(policy) for _ in range(self.asyppo.critics))
        for critic in self.critics:
            shard_for_strategy(self, critic)

    def build_critic(self, policy: torch.nn.Module) -> ValueModel:
        spec = self.asyppo.critic_model
        if spec is None:
            return ValueModel.from_policy(policy)
        spec = dict(spec)
        init_from = spec.pop("init_from", None)
        settings = (
            spec if spec.get("arch", policy.config.arch) != policy.config.arch else {**policy.config.to_dict(), **spec}
        )
        config = config_from_dict(settings)
        body = build_initialized(config, init_from)
        self.check_critic_vocabulary(policy, body, critic_tokenizer(config, init_from))
        return ValueModel(body.to(next(policy.parameters()).device))

    def check_critic_vocabulary(self, policy: torch.nn.Module, body: torch.nn.Module, tokenizer: Any) -> None:
        """The critics read the policy's tokens: their embedding must hold every id that both the policy's tokenizer
        and its embedding have, and a critic with a tokenizer of its own must have the policy's. Embedding rows
        past the tokenizer are padding and may differ (Qwen2.5-7B has 152,064 rows, 0.5B-3B 151,936, one
        tokenizer)."""
        policy_tokenizer = self._trainer.datamodule.tokenizer if self._trainer is not None else None
        tokens = policy.embed.weight.shape[0]
        if policy_tokenizer is not None:
            tokens = min(tokens, len(policy_tokenizer))
        rows = body.embed.weight.shape[0]
        if rows < tokens:
            raise ConfigError(
                f"module.asyppo.critic_model has a vocabulary of {rows} rows, the policy reads {tokens} tokens: "
                "the critics read the policy's tokens"
            )
        known = tokenizer is not None and policy_tokenizer is not None
        if known and tokenizer.get_vocab() != policy_tokenizer.get_vocab():
            raise ConfigError(
                f"module.asyppo.critic_model's tokenizer ({tokenizer.name_or_path}) is not the policy's: the critics "
                "read the policy's tokens"
            )

    def trainable(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.model, self.critics])

    def parameter_groups(self) -> list[dict]:
        if self.asyppo.critic_lr is None:
            return super().parameter_groups()
        critics = adamw_groups(self.critics, self.optim_config, lr=self.asyppo.critic_lr)
        return adamw_groups(self.model, self.optim_config) + critics

    # -- the stages -----------------------------------------------------------------------------------------
    def value_estimate(self, batch: RolloutBatch) -> torch.Tensor:
        def forward(part: RolloutBatch) -> torch.Tensor:
            lengths = self.packing(part)
            return torch.stack([per_position(critic, part.input_ids, lengths) for critic in self.critics], 1)

        values = self.micro_batched(batch, forward) * batch.response_mask[:, None]
        batch.extras["critic_values"] = values  # (N, M, L)
        batch.extras["critic_index"] = critic_shards(batch.prompt_index, self.asyppo.critics, self.asyppo.shard_mode)
        value, sigma = ensemble_values(values.transpose(0, 1), self.asyppo.aggregate)
        batch.extras["sigma"] = sigma
        return value

    def advantages(self, batch: RolloutBatch) -> torch.Tensor:
        advantages = super().advantages(batch)
        a, mask = self.asyppo, batch.response_mask
        if a.mask_population == "batch":
            keep_advantage, keep_entropy = self.masks(batch.extras["sigma"], mask)
            batch.extras["keep_advantage"], batch.extras["keep_entropy"] = keep_advantage, keep_entropy
        self._log_ensemble(batch)
        return advantages

    def masks(self, sigma: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The advantage and entropy masks over ``mask``'s tokens; ``mask_kind: random`` swaps σ for noise drawn
        from the step's seed (the same fractions, no information)."""
        a = self.asyppo
        if a.mask_kind == "random":
            generator = torch.Generator().manual_seed(self.step_seed())
            sigma = torch.rand(sigma.shape, generator=generator).to(sigma.device)
        return uncertainty_masks(sigma, mask, a.advantage_mask, a.entropy_filter)

    def start_minibatch(self, minibatch: RolloutBatch) -> None:
        """The minibatch's denominators, each critic's shard's among them, and (``mask_population: minibatch``) its
        masks, from σ over the whole minibatch before it is split into micro-batches."""
        super().start_minibatch(minibatch)
        owner, mask = minibatch.extras["critic_index"], minibatch.response_mask
        for m in range(self.asyppo.critics):
            rows = (owner == m) | (owner == EVERY_CRITIC)
            minibatch.totals[f"critic_{m}"] = Totals.of(mask[rows])
        if self.asyppo.mask_population == "minibatch":
            keep_advantage, keep_entropy = self.masks(minibatch.extras["sigma"], mask)
            minibatch.extras["keep_advantage"], minibatch.extras["keep_entropy"] = keep_advantage, keep_entropy

    def loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, mask = self.asyppo, batch.response_mask
        if "keep_advantage" not in batch.extras:  # a minibatch not begun by start_minibatch (the loss called alone)
            self.start_minibatch(batch)
        keep_advantage, keep_entropy = batch.extras["keep_advantage"], batch.extras["keep_entropy"]
        totals = batch.total()
        fractions = {
            "asyppo/advantage_masked": token_share(1 - keep_advantage.to(mask.dtype), mask, totals),
            "asyppo/entropy_filtered": token_share(1 - keep_entropy.to(mask.dtype), mask, totals),
        }
        if self.global_step < a.critic_warmup_steps:  # the critics learn alone first
            value_loss, logs = self.value_loss(batch)
            return self.ppo.vf_coef * value_loss, {**logs, **fractions}
        masked = replace(
            batch, advantages=batch.advantages * keep_advantage, extras={**batch.extras, "keep_entropy": keep_entropy}
        )
        loss, logs = super().loss(masked)
        return loss, {**logs, **fractions}

    def entropy_weights(self, batch: RolloutBatch) -> torch.Tensor | None:
        return batch.extras.get("keep_entropy")

    def value_loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every critic's clipped value loss on its own shard, summed."""
        owner, lengths = batch.extras["critic_index"], self.packing(batch)
        total, logs = torch.zeros((), device=batch.input_ids.device), {}
        for m, critic in enumerate(self.critics):
            rows = ((owner == m) | (owner == EVERY_CRITIC)).nonzero().squeeze(1)
            if not len(rows):
                continue
            loss = clipped_value_loss(
                per_position(critic, batch.input_ids[rows], None if lengths is None else lengths[rows]),
                batch.extras["critic_values"][rows, m],
                batch.returns[rows],
                batch.response_mask[rows],
                self.ppo.value_clip,
                self.algorithm.aggregation,
                batch.total(f"critic_{m}"),
            )
            total = total + loss
            logs[f"critic/value_loss_{m}"] = loss.detach()
        logs["critic/value_loss"] = total.detach()
        return total, logs

    def _log_ensemble(self, batch: RolloutBatch) -> None:
        """σ (mean, histogram) and each critic's explained variance of the returns on its own shard."""
        mask = batch.response_mask.bool()
        sigma = batch.extras["sigma"][mask]
        logs = {"asyppo/sigma_mean": sigma.mean()}
        for m in range(self.asyppo.critics):
            owner = batch.extras["critic_index"]
            mine = mask & ((owner == m) | (owner == EVERY_CRITIC))[:, None]
            returns, values = batch.returns[mine], batch.extras["critic_values"][:, m][mine]
            if len(returns) > 1 and returns.var() > 0:
                logs[f"critic/explained_variance_{m}"] = 1 - (returns - values).var() / returns.var().clamp(min=1e-8)
        self.log_dict(logs)
        log_histogram(self.trainer, "asyppo/sigma", sigma, self.global_step)
