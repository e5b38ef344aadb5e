"""The RL base module: every RL method in zoo is this loop with one stage replaced.

Each training step takes a batch of prompts (``zoo.datamodules.prompts``) and runs four stages, each a method a
subclass may override:

1. :meth:`rollout`: ``G`` completions per prompt from the rollout callback's engine (``zoo.rollout.callback``);
2. :meth:`score`: the task's reward per completion (``zoo.rl.rewards``; a reward that throws or hangs scores 0
   and is counted);
3. :meth:`advantages`: one of ``zoo.rl.advantages`` (GRPO by default), then scaled per token by the credit
   strategy ``credit`` when one is set (:meth:`assign_credit`, ``zoo.rl.methods.attention_credit``: the policy's
   attention picks the tokens whose advantages are amplified);
4. :meth:`loss`: the :meth:`objective` (the policy-gradient loss ``pg_variant`` of ``zoo.rl.pg_variants``: by
   default PPO-clip with truncated importance sampling against the engine's log-probs; the off-policy variants
   for asynchronous rollout) plus the optional KL to a frozen reference and entropy bonus.

Stages 1-3 make :meth:`training_batch` (a method whose batch differs, e.g. RAVR's two samplers, replaces it whole)
and :meth:`update` runs the loss stage: ``ppo_epochs`` passes over the batch in minibatches of ``minibatch_size``
sequences, one optimizer step per minibatch (manual optimization: Lightning's ``global_step`` counts these steps).
With one epoch and one minibatch the update is on-policy and the ratio is 1. ``train/rollouts`` counts the
completions sampled for training so far (the x-axis of sample-efficiency comparisons).

After every validation run: pass@k of the policy on the validation prompts (greedy by default), counted by the
task's correctness (``zoo.rl.evaluation``), not by a shaped reward.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics.aggregation import MeanMetric

from zoo.errors import ConfigError, TrainingDiverged, config_section, require_int
from zoo.generation.sampling import SamplingParams
from zoo.modules.policy import PolicyModule
from zoo.rl import advantages as estimators
from zoo.rl.batch_plan import BatchPlan
from zoo.rl.evaluation import correctness_runner, evaluate_pass_at_k, solved_groups
from zoo.rl.losses import Totals, aggregate, kl_penalty
from zoo.rl.methods.attention_credit import CreditAssignment
from zoo.rl.pg_variants import PolicyInputs, policy_loss, variant_options
from zoo.rl.rewards import PendingRewards, RewardBatch, RewardRunner, overlong_penalty
from zoo.rl.rollout import RolloutBatch, Round, token_logprobs
from zoo.rollout.samplers.base import Sampler
from zoo.training.lora import adapters_disabled
from zoo.training.optim import OptimConfig, adamw_groups, build_adamw, build_schedule, ensure_finite
from zoo.training.quantization import check_bits, quantize_frozen
from zoo.training.strategies import clip_grad_norm

log = logging.getLogger("zoo")


@dataclass
class RolloutConfig:
    n: int = 8  # completions per prompt (the group size)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # mixed into every per-step random stream (zoo fit: the run's seed); None: step and rank


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO's clip-higher: 0.28
    pg_variant: str = "ppo"  # ppo | decoupled_ppo | tis | cispo | topr | kimi15 | gspo (zoo.rl.pg_variants)
    pg_options: dict[str, Any] = field(default_factory=dict)  # the variant's own settings
    aggregation: str = "token_mean"  # token_mean (DAPO) | seq_mean_token_mean (GRPO) | seq_mean_token_sum
    ppo_epochs: int = 1
    minibatch_size: int | None = None  # sequences per optimizer step; None: the whole rollout batch
    micro_batch_size: int | None = None  # sequences per forward (gradients accumulate); None: no row limit
    micro_batch_tokens: int | None = None  # tokens per forward (rows x longest row); None: no token limit
    padding_free: bool = False  # forwards on packed rows (zoo.rl.packing): fewer rows per micro-batch
    kl_coef: float = 0.0  # > 0 keeps a frozen reference policy (a LoRA policy's: itself with its adapters off)
    reference_quantization: str | None = (
        None  # 8bit | 4bit: the reference held by bitsandbytes (zoo.training.quantization)
    )
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = 2.0  # truncated importance sampling against the engine's log-probs; None: off
    reward_timeout_s: float = 10.0
    max_skipped_steps: int = 10  # steps skipped for non-finite advantages before the run stops
    overlong_buffer: int | None = None  # DAPO's soft overlong penalty over the last tokens before max_new_tokens
    overlong_penalty: float = 1.0  # its size at max_new_tokens
    skip_uniform_groups: bool = False  # train only the groups whose rewards differ (QAgent's code; DAPO's filter)


@dataclass
class EvaluationConfig:
    n: int = 1
    ks: list[int] = field(default_factory=lambda: [1])
    temperature: float = 0.0
    max_new_tokens: int = 64


class RLModule(PolicyModule):
    counters = ("skipped_steps", "rollouts_consumed")

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
        algorithm: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        credit: str = "none",
        credit_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.optim_config = OptimConfig.from_dict(optim) if optim else OptimConfig(lr=1e-5)
        self.rollout_config = config_section(RolloutConfig, rollout, "module.rollout")
        self.algorithm = config_section(AlgorithmConfig, algorithm, "module.algorithm")
        check_bits("module.algorithm.reference_quantization", self.algorithm.reference_quantization)
        if self.lora is not None and self.algorithm.reference_quantization is not None:
            raise ConfigError(
                "module.algorithm.reference_quantization: a LoRA policy's reference is its own base (adapters off), "
                "not a copy; quantize that base with model.lora.quantize"
            )
        self.evaluation = config_section(EvaluationConfig, evaluation, "module.evaluation")
        if not self.algorithm.reward_timeout_s > 0:
            raise ConfigError(f"module.algorithm.reward_timeout_s must be > 0, got {self.algorithm.reward_timeout_s!r}")
        require_int("module.algorithm.max_skipped_steps", self.algorithm.max_skipped_steps, 0)
        buffer = self.algorithm.overlong_buffer
        if buffer is not None:
            require_int("module.algorithm.overlong_buffer", buffer, 1)
            if not self.algorithm.overlong_penalty >= 0:
                raise ConfigError(
                    f"module.algorithm.overlong_penalty must be >= 0, got {self.algorithm.overlong_penalty!r}"
                )
            if buffer > self.rollout_config.max_new_tokens:
                raise ConfigError(
                    f"module.algorithm.overlong_buffer={buffer} is longer than module.rollout.max_new_tokens="
                    f"{self.rollout_config.max_new_tokens}: the penalty's buffer ends at the length limit"
                )
        for key in ("minibatch_size", "micro_batch_size", "micro_batch_tokens"):
            if getattr(self.algorithm, key) is not None:
                require_int(f"module.algorithm.{key}", getattr(self.algorithm, key), 1)
        self.pg_options = variant_options(self.algorithm.pg_variant, self.algorithm.pg_options)
        assignment = CreditAssignment(credit, credit_options)  # validates both, even when off
        self.credit = assignment if credit != "none" else None
        if self.algorithm.advantage not in (*estimators.SEQUENCE_ESTIMATORS, "reinforce_pp"):
            raise ConfigError(f"unknown module.algorithm.advantage {self.algorithm.advantage!r}")
        self.reference: torch.nn.Module | None = None
        self.val_metrics = torch.nn.ModuleDict()
        self.rewards: RewardRunner | None = None
        self.correctness: RewardRunner | None = None  # the task's verifier, where the reward is another function
        self.skipped_steps = 0  # steps whose advantages were not finite (checkpointed)
        self.rollouts_consumed = 0  # completions sampled for training so far (checkpointed)

    # -- setup ------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.build_policy()

    def copy_policy(self, policy: torch.nn.Module) -> None:
        """The frozen reference (each rank keeps a whole copy; quantized with ``reference_quantization``; none for
        a LoRA policy, whose reference is itself with its adapters off); PPO adds its critic."""
        a = self.algorithm
        if a.kl_coef > 0 and self.lora is None:
            self.reference = copy.deepcopy(policy).requires_grad_(False).eval()
            if a.reference_quantization is not None:
                quantize_frozen(self.reference, a.reference_quantization, "module.algorithm.reference_quantization")

    @property
    def has_reference(self) -> bool:
        return self.algorithm.kl_coef > 0

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """The reference policy's log-probs (N, L) of the completion tokens, micro-batch by micro-batch."""
        if self.reference is not None:
            return self.micro_batched(batch, lambda part: self.logprobs_of(self.reference, part))
        with adapters_disabled(self.model):
            return self.policy_logprobs(batch)

    def policy_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """The policy's log-probs (N, L) of ``batch``'s completion tokens now, without gradients, micro-batch by
        micro-batch (the proximal log-probs of several updates, PPO's old log-probs)."""
        return self.micro_batched(batch, lambda part: self.logprobs_of(self.model, part))

    def logprobs_of(self, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
        """``model``'s log-probs (N, L) of ``batch``'s target tokens at the rollout temperature."""
        return token_logprobs(model, batch.input_ids, self.rollout_config.temperature, lengths=self.packing(batch))[0]

    def packing(self, batch: RolloutBatch) -> torch.Tensor | None:
        """What a forward over ``batch`` packs (each row's length, :mod:`zoo.rl.packing`) with
        ``module.algorithm.padding_free``; None: the padded rows as they are."""
        return batch.lengths() if self.algorithm.padding_free else None

    @property
    def micro_batching(self) -> dict[str, Any]:
        """How a batch is split into forwards (:meth:`RolloutBatch.micro_batches`' settings)."""
        a = self.algorithm
        return dict(size=a.micro_batch_size, tokens=a.micro_batch_tokens, packed=a.padding_free)

    def micro_batched(self, batch: RolloutBatch, forward) -> torch.Tensor:
        """``forward`` without gradients over the micro-batches of ``batch`` (``micro_batch_size`` rows,
        ``micro_batch_tokens`` tokens), laid out as the whole batch's (:meth:`RolloutBatch.map_micro_batches`)."""
        with torch.no_grad():
            return batch.map_micro_batches(forward, **self.micro_batching)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        self.rewards = RewardRunner(datamodule.reward, timeout_s=self.algorithm.reward_timeout_s)
        self.correctness = correctness_runner(datamodule, self.algorithm.reward_timeout_s)
        for k in self.evaluation.ks:
            self.val_metrics[f"pass@{k}"] = MeanMetric()
        self.val_metrics["reward"] = MeanMetric()
        self.val_metrics["length"] = MeanMetric()

    rows_per_sample = 1  # rows of the rollout batch per sampled completion (RAVR lays out three)

    def on_fit_start(self) -> None:
        """The batch hierarchy, checked and printed before the first rollout (:mod:`zoo.rl.batch_plan`)."""
        data, a = self.trainer.datamodule, self.algorithm
        prompts = [p["prompt_ids"] for p in getattr(data, "train_set", [])]
        plan = BatchPlan(
            prompts=data.hparams.batch_size,
            n=self.rollout_config.n,
            rows_per_sample=self.rows_per_sample,
            ppo_epochs=a.ppo_epochs,
            minibatch_size=a.minibatch_size,
            micro_batch_size=a.micro_batch_size,
            micro_batch_tokens=a.micro_batch_tokens,
            longest_row=max(map(len, prompts), default=0) + self.rollout_config.max_new_tokens,
            padding_free=a.padding_free,
        ).check()
        if self.trainer.is_global_zero:
            log.info(plan.table())
        for logger in self.trainer.loggers:
            logger.log_metrics(plan.metrics(), step=0)

    def teardown(self, stage: str) -> None:
        for runner in (self.rewards, self.correctness):
            if runner is not None:
                runner.close()
        self.rewards = self.correctness = None

    @property
    def rollout_callback(self):
        from zoo.rollout.callback import RolloutCallback

        for callback in self.trainer.callbacks:
            if isinstance(callback, RolloutCallback):
                return callback
        raise ConfigError("RL modules need the rollout callback: choose rollout=native")

    @property
    def tokenizer(self):
        return self.trainer.datamodule.tokenizer

    def step_seed(self) -> int:
        """The seed of this step's random draws (rollouts, minibatch order, the random credit control and masks):
        the step and rank, and ``module.rollout.seed`` when set (``zoo fit`` sets it to the run's ``seed``, so that
        runs of different seeds sample different rollouts), so that a resumed run draws what the original would
        have."""
        seed = self.global_step * 1_000_003 + self.global_rank
        return seed if self.rollout_config.seed is None else seed + self.rollout_config.seed * 2**32

    def sampling_params(self) -> SamplingParams:
        """Sampling seeded by :meth:`step_seed`."""
        c = self.rollout_config
        seed = self.step_seed()
        stops = self.trainer.datamodule.stop_token_ids
        return SamplingParams(c.max_new_tokens, c.temperature, c.top_p, c.top_k, stop_token_ids=stops, seed=seed)

    # -- the four stages --------------------------------------------------------------------------------
    def rollout(
        self,
        problems: list[dict[str, Any]],
        n: int | None = None,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> Round:
        """Stage 1: ``n`` completions per prompt (default: the group size G). With a quota the engine stops once
        that many prompts have ``group_complete_at`` finished completions (what samplers ask for); the round
        keeps those prompts and their completions."""
        result = self.rollout_callback.generate(
            self,
            [p["prompt_ids"] for p in problems],
            n or self.rollout_config.n,
            self.sampling_params(),
            finished_groups_quota=finished_groups_quota,
            group_complete_at=group_complete_at,
        )
        return Round.from_generation(problems, result, self.tokenizer, self.device)

    def score(self, step: Round) -> RewardBatch:
        """Stage 2: one reward per completion of the round."""
        return self.submit_scores([step.problems[i] for i in step.batch.prompt_index.tolist()], step.texts).wait()

    def submit_scores(self, problems: list[dict[str, Any]], texts: list[str]) -> PendingRewards:
        """Start scoring ``texts`` (completion i answers ``problems[i]``) on the reward runner's workers."""
        return self.rewards.submit_answers(problems, texts)

    def log_rewards(self, result: RewardBatch) -> torch.Tensor:
        """Log what a batch's scoring found; its scores on the module's device."""
        self.log_dict({"reward/failures": float(result.failures), "reward/timeouts": float(result.timeouts)})
        for name, values in result.parts.items():
            self.log(f"reward/{name}", values.mean())
        return result.scores.to(self.device)

    def shape_for_length(self, rewards: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        """``rewards`` plus DAPO's overlong penalty of each completion's length (its policy tokens), with
        ``module.algorithm.overlong_buffer`` set (:func:`zoo.rl.rewards.overlong_penalty`)."""
        a = self.algorithm
        if a.overlong_buffer is None:
            return rewards
        lengths = batch.response_mask.sum(1)
        penalty = overlong_penalty(lengths, self.rollout_config.max_new_tokens, a.overlong_buffer, a.overlong_penalty)
        self.log("reward/overlong_penalty", penalty.mean())
        return rewards + penalty.to(rewards.dtype)

    def advantages(self, batch: RolloutBatch) -> torch.Tensor:
        """Stage 3: token-level advantages (N, L)."""
        kind, n = self.algorithm.advantage, self.rollout_config.n
        if kind == "reinforce_pp":
            return estimators.reinforce_pp_baseline_advantages(batch.rewards, n, batch.response_mask)
        sequence = estimators.SEQUENCE_ESTIMATORS[kind](batch.rewards, n)
        return estimators.expand_to_tokens(sequence, batch.response_mask)

    def assign_credit(self, batch: RolloutBatch) -> torch.Tensor:
        """Stage 3b: the advantages scaled by the credit strategy's γ (read from the policy before this batch's
        updates, in forwards no larger than the micro-batches); the random control is seeded by :meth:`step_seed`."""
        generator = torch.Generator().manual_seed(self.step_seed())
        a = self.algorithm
        advantages, stats = self.credit(
            self.model, batch, self.rollout_config.temperature, generator, a.micro_batch_size, a.micro_batch_tokens
        )
        logs = {"credit/amplified": stats.amplified, "credit/mean_gamma": stats.mean_gamma}
        logs["credit/pass_seconds"] = stats.pass_seconds
        if stats.entropy_overlap is not None:
            logs["credit/high_entropy_overlap"] = stats.entropy_overlap
        self.log_dict(logs)
        return advantages

    kl_in_loss = True  # GRPO's place for the KL to the reference; PPO puts it in the reward instead
    logs_entropy = False  # log the policy's entropy even without an entropy bonus

    def entropy_weights(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Per-token weights (N, L) of the entropy bonus (None: every completion token counts fully)."""
        return None

    def loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage 4: the policy loss of a minibatch (:meth:`objective`, plus the KL to the reference and the entropy
        bonus when set), and what to log about it."""
        a = self.algorithm
        logprobs, entropy = token_logprobs(
            self.model,
            batch.input_ids,
            self.rollout_config.temperature,
            with_entropy=a.entropy_coef > 0 or self.logs_entropy,
            lengths=self.packing(batch),
        )
        loss, logs = self.objective(batch, logprobs)
        # the KL and entropy terms are aggregated as the policy loss is (per token, or per sequence first)
        mask, length, totals = batch.response_mask, self.rollout_config.max_new_tokens, batch.total()
        if self.has_reference and self.kl_in_loss:
            per_token = kl_penalty(logprobs, batch.ref_logprobs, a.kl_estimator)
            kl = aggregate(per_token, mask, a.aggregation, length, totals)
            loss = loss + a.kl_coef * kl
            logs["policy/kl_to_reference"] = kl.detach()
        if entropy is not None:
            logs["policy/entropy"] = aggregate(entropy, mask, a.aggregation, length, totals).detach()
            if a.entropy_coef > 0:
                weights = self.entropy_weights(batch)
                weighted = entropy * weights if weights is not None else entropy
                loss = loss - a.entropy_coef * aggregate(weighted, mask, a.aggregation, length, totals)
        return loss, logs

    def objective(self, batch: RolloutBatch, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss of a minibatch (``module.algorithm.pg_variant``, :mod:`zoo.rl.pg_variants`) given the
        policy's log-probs (N, L) of its tokens."""
        a = self.algorithm
        proximal = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        inputs = PolicyInputs(
            logprobs, proximal, batch.rollout_logprobs, batch.advantages, batch.rewards, batch.response_mask
        )
        loss, stats, extras = policy_loss(
            a.pg_variant,
            self.pg_options,
            inputs,
            a.clip_low,
            a.clip_high,
            a.aggregation,
            self.rollout_config.max_new_tokens,
            a.tis_cap,
            batch.total(),
        )
        logs = {
            "policy/clip_fraction": stats.clip_fraction,
            "policy/approx_kl": stats.approx_kl,
            "policy/pg_loss": loss.detach(),
            **extras,
        }
        return loss, logs

    # -- the loop ---------------------------------------------------------------------------------------
    def prepare(self, batch: RolloutBatch) -> None:
        """Log-probs the loss compares against, computed before any update of this batch."""
        a = self.algorithm
        several_updates = a.ppo_epochs > 1 or (a.minibatch_size or len(batch)) < len(batch)
        if several_updates:
            batch.old_logprobs = self.policy_logprobs(batch)
        if self.has_reference:
            batch.ref_logprobs = self.reference_logprobs(batch)

    @property
    def sampler(self):
        """What decides which prompts each step trains, if not the training loader: a sampler callback (tail
        batching), or else the rollout callback's own (queue scheduling, asynchronous rollout)."""
        found = next((c for c in self.trainer.callbacks if isinstance(c, Sampler)), None)
        return found or self.rollout_callback.sampler

    def training_step(self, problems: list[dict[str, Any]], batch_idx: int) -> None:
        batch = self.training_batch(problems)
        if batch is not None:
            self.update(batch)

    def training_batch(self, problems: list[dict[str, Any]]) -> RolloutBatch | None:
        """Stages 1-3 of a step: the rollout batch with its rewards and advantages, logged; None when the step
        is skipped (non-finite advantages)."""
        sampler = self.sampler
        step = sampler.next_round(self) if sampler is not None else self.rollout(problems)
        batch = step.batch
        self.count_rollouts(len(batch))
        rewards = step.rewards if step.rewards is not None else self.score(step)
        batch.rewards = self.shape_for_length(self.log_rewards(rewards), batch)
        self.log_dict(
            {
                "reward/mean": batch.rewards.mean(),
                "reward/std": batch.rewards.std() if len(batch) > 1 else torch.zeros(()),
                "reward/solved_groups": solved_groups(rewards, self.rollout_config.n),
            },
            prog_bar=True,
        )
        if self.algorithm.skip_uniform_groups:
            batch = self.varied_groups(batch)
        self.prepare(batch)
        batch.advantages = self.advantages(batch)
        if not self.finite_advantages(batch):
            return None
        if self.credit is not None:
            batch.advantages = self.assign_credit(batch)
        return batch

    def varied_groups(self, batch: RolloutBatch) -> RolloutBatch:
        """The batch without the groups whose rewards are all equal (no signal under group-normalised advantages;
        they would only dilute the loss's mean). When every group is uniform the whole batch stays: its advantages
        are all 0, so only the KL term moves the policy, and the optimizer step still counts (a run of skipped
        steps would never reach ``max_steps``)."""
        groups = batch.rewards.view(-1, self.rollout_config.n)
        varied = (groups != groups[:, :1]).any(1)
        self.log("train/uniform_groups", (~varied).float().mean())
        if not varied.any():
            return batch
        return batch.select(varied.repeat_interleave(self.rollout_config.n).nonzero().squeeze(1))

    def count_rollouts(self, completions: int) -> None:
        """Add a step's sampled completions to ``train/rollouts`` (what the step consumed; checkpointed)."""
        self.rollouts_consumed += completions
        self.log("train/rollouts", float(self.rollouts_consumed))

    def finite_advantages(self, batch: RolloutBatch) -> bool:
        """False (the step is skipped and counted) when an advantage is not finite, e.g. a custom reward or
        estimator gone wrong; the run stops after ``max_skipped_steps`` of them."""
        if torch.isfinite(batch.advantages).all():
            return True
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self.skipped_steps > self.algorithm.max_skipped_steps:
            raise TrainingDiverged(
                f"{self.skipped_steps} steps had non-finite advantages (the last at step {self.global_step}), "
                f"more than module.algorithm.max_skipped_steps={self.algorithm.max_skipped_steps}"
            )
        return False

    def update(self, batch: RolloutBatch) -> None:
        """The optimizer steps on a batch: ``ppo_epochs`` passes in minibatches of ``minibatch_size`` sequences,
        each minibatch's gradient accumulated over its micro-batches (``micro_batch_size`` sequences and
        ``micro_batch_tokens`` tokens per forward): every micro-batch's loss is its share of the minibatch's (the
        minibatch's denominators, :meth:`start_minibatch`), so the step equals the unsplit one."""
        a, optimizer, schedule = self.algorithm, self.optimizers(), self.lr_schedulers()
        size = a.minibatch_size or len(batch)
        generator = torch.Generator().manual_seed(self.step_seed())
        for _ in range(a.ppo_epochs):
            for minibatch in batch.minibatches(size, generator if size < len(batch) else None):
                self.start_minibatch(minibatch)
                loss, logs = 0.0, {}
                parts = minibatch.micro_batches(**self.micro_batching)
                for index, micro_batch in enumerate(parts):
                    with self.gradient_sync(index == len(parts) - 1):
                        micro_loss, micro_logs = self.loss(micro_batch)
                        self.manual_backward(micro_loss)
                    loss = loss + micro_loss.detach()  # every logged term is a share of the minibatch's: they add up
                    for name, value in micro_logs.items():
                        logs[name] = logs.get(name, 0.0) + value
                norm = clip_grad_norm(self.trainer.strategy, self.trainable(), self.optim_config.grad_clip or math.inf)
                ensure_finite(self.global_step, loss=loss, grad_norm=norm)  # before the optimizer step
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                self.log_dict(
                    {
                        **logs,
                        "train/loss": loss.detach(),
                        "train/grad_norm": norm,
                        "train/lr": schedule.get_last_lr()[0],
                    }
                )

    def gradient_sync(self, last: bool):
        """Around a micro-batch's backward: under DDP the gradients are all-reduced once a minibatch, at its last
        micro-batch (the others accumulate locally, ``no_sync``); every other strategy as it is."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None and not last else contextlib.nullcontext()

    def start_minibatch(self, minibatch: RolloutBatch) -> None:
        """Before a minibatch's micro-batches: the denominators its loss terms are aggregated by (``response``: its
        response tokens and sequences; a method with terms over other rows adds theirs)."""
        minibatch.totals = {"response": Totals.of(minibatch.response_mask)}

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups (AsyPPO gives its critics their own learning rate)."""
        return adamw_groups(self.trainable(), self.optim_config)

    def configure_optimizers(self):
        optimizer = build_adamw(self.parameter_groups(), self.optim_config)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000
        schedule = build_schedule(optimizer, self.optim_config, total)
        return [optimizer], [schedule]

    @property
    def rebuilds_state(self) -> bool:
        return super().rebuilds_state or self.algorithm.reference_quantization is not None

    def rebuilt_entries(self) -> set[str]:
        """A LoRA policy's frozen base (:class:`zoo.modules.policy.PolicyModule`) and a quantized reference (rebuilt
        from the starting weights)."""
        rebuilt = super().rebuilt_entries()
        if self.reference is not None and self.algorithm.reference_quantization is not None:
            rebuilt |= {f"reference.{k}" for k in self.reference.state_dict()}
        return rebuilt

    def trainable(self) -> torch.nn.Module:
        """What the optimizer updates (the policy; PPO adds its critic)."""
        return self.model

    # -- evaluation -------------------------------------------------------------------------------------
    def validation_step(self, problems: list[dict[str, Any]], batch_idx: int) -> None:
        e = self.evaluation
        params = SamplingParams(
            e.max_new_tokens, e.temperature, stop_token_ids=self.trainer.datamodule.stop_token_ids, seed=batch_idx
        )
        results = evaluate_pass_at_k(
            self.rollout_callback.engine, self.tokenizer, problems, self.rewards, params, e.n, e.ks, self.correctness
        )
        for name, values in results.items():
            self.val_metrics[name].update(values)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric.compute())
            metric.reset()

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids, **kwargs)
