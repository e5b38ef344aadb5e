"""RAVR, reference-answer-guided variational reasoning (Lin et al. 2025, arXiv:2510.25206; notes §5): one policy
samples reasoning paths twice, from the question alone (the prior π(z|x), what inference uses) and from an
answer-conditioned "think aloud" prompt (the posterior q(z|x, y*), ``data.posterior_prompt``); conditioning on
the answer reweights paths by their utility s(z) = π(y*|x, z), so the posterior finds good paths the prior rarely
samples, and the prior is taught from them.

Each step replaces the base module's batch (:meth:`training_batch`) with three kinds of rows, one engine call for
both samplers (G = ``module.rollout.n`` paths each):

- posterior paths (the completion's tokens up to the answer cue), trained by the PPO-clip policy gradient with
  advantage ``(s − b̂) / σ`` (:func:`zoo.rl.methods.ravr.posterior_advantages`), weight
  ``module.ravr.posterior_weight``;
- the same paths with the cue and the reference answer after the question-only prompt, trained by
  utility-weighted cross-entropy (the utility-reweighted KL term and the ELBO's answer term,
  :func:`zoo.rl.methods.ravr.weighted_path_nll`), weight ``distill_weight``;
- prior paths, trained by GRPO on the task's reward, weight ``prior_weight`` (0 by default: the prior samples then
  serve as the baseline b̂ and as the measurement of μ).

s is the length-normalised probability of the reference's final answer (``Task.final_answer``: GSM8K's number
after ``####``) after the path and the task's answer cue (``module.ravr.answer_cue``), teacher-forced on the
policy before the step's update (:mod:`zoo.rl.methods.ravr_answer_utility`).

Logged: ``ravr/mu`` (μ̂ = E_p[s]), ``ravr/posterior_utility`` (E_q[s] measured on the posterior paths),
``ravr/bayes_posterior_utility`` (μ + Var(s)/μ estimated from the prior paths: what the exact
Bayesian posterior would reach), ``ravr/kl`` (KL(q‖p) on the posterior samples), ``ravr/prior_accuracy`` and
``ravr/posterior_accuracy`` (the task's reward of each sampler), ``ravr/distilled`` (the share of posterior paths
with a positive weight), ``train/rollouts`` (prior plus posterior completions); validation is the base module's
greedy pass@k of the prior, as inference runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from zoo.errors import ConfigError
from zoo.generation.engine import Sample
from zoo.modules.rl import RLModule, config_section
from zoo.rl import advantages as estimators
from zoo.rl.losses import Totals
from zoo.rl.methods import ravr as objective
from zoo.rl.methods.ravr_answer_posterior import estimated_posterior_utility
from zoo.rl.methods.ravr_answer_utility import answer_utility
from zoo.rl.rollout import RolloutBatch, assemble

PRIOR, POSTERIOR, DISTILLED = 0, 1, 2  # the row kinds of a RAVR batch (extras["kind"])


@dataclass
class RAVRConfig:
    posterior_weight: float = 1.0  # the posterior policy gradient, reward s − b̂
    distill_weight: float = 1.0  # utility-weighted cross-entropy of posterior paths under the question-only prompt
    prior_weight: float = 0.0  # GRPO on the prior paths with the task's reward
    answer_cue: str = "#"  # what precedes the answer in a completion (chain, methods: '#'; gsm8k: '#### ')


class RAVRModule(RLModule):
    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
        algorithm: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        ravr: dict[str, Any] | None = None,
        credit: str = "none",
        credit_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optim, rollout, algorithm, evaluation, credit=credit, credit_options=credit_options)
        self.save_hyperparameters()
        if credit != "none":
            raise ConfigError(f"module.credit={credit!r}: RAVR's advantages take no credit assignment (use none)")
        if self.algorithm.overlong_buffer is not None:
            raise ConfigError("module.algorithm.overlong_buffer: RAVR's utilities are not length-shaped (use null)")
        c = self.ravr = config_section(RAVRConfig, ravr, "module.ravr")
        weights = {"posterior_weight": c.posterior_weight, "distill_weight": c.distill_weight}
        for key, value in {**weights, "prior_weight": c.prior_weight}.items():
            if not value >= 0:
                raise ConfigError(f"module.ravr.{key} must be >= 0, got {value!r}")
        if c.posterior_weight + c.distill_weight + c.prior_weight == 0:
            raise ConfigError("module.ravr: posterior_weight, distill_weight and prior_weight are all 0")
        if not c.answer_cue:
            raise ConfigError("module.ravr.answer_cue must not be empty")
        if self.algorithm.advantage not in estimators.SEQUENCE_ESTIMATORS:
            known = ", ".join(estimators.SEQUENCE_ESTIMATORS)
            raise ConfigError(f"module.algorithm.advantage={self.algorithm.advantage!r}: RAVR takes {known}")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        if getattr(self.trainer.datamodule, "posterior_template", None) is None:
            raise ConfigError("RAVR needs answer-conditioned prompts: set data.posterior_prompt")
        if self.sampler is not None:
            raise ConfigError(
                "RAVR samples its own prior and posterior groups: it takes no sampler or queue scheduling"
            )

    def training_batch(self, problems: list[dict[str, Any]]) -> RolloutBatch | None:
        prompts, n = len(problems), self.rollout_config.n
        asked = [p["prompt_ids"] for p in problems] + [p["posterior_ids"] for p in problems]
        samples = self.rollout_callback.generate(self, asked, n, self.sampling_params()).samples
        if len(samples) != 2 * prompts * n:
            raise RuntimeError(f"the engine returned {len(samples)} completions, not {2 * prompts * n}")
        self.count_rollouts(len(samples))
        texts = [self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
        answered = [problems[s.prompt_index % prompts] for s in samples]
        correct = self.log_rewards(self.submit_scores(answered, texts).wait())

        # utilities of every path under the question-only prompt, before this step's update
        contexts, answers = objective.utility_inputs(
            self.tokenizer,
            [p["prompt_ids"] for p in answered],
            texts,
            [p["answer"] for p in answered],
            self.ravr.answer_cue,
        )
        utility = answer_utility(self.model, contexts, answers, **self.micro_batching)
        utility = utility.view(2, prompts, n)
        prior, posterior = utility[0], utility[1]

        # rows: prior completions; posterior paths (their tokens up to the answer cue); each posterior path with the
        # cue and the reference answer after the question-only prompt (the sequence its utility was measured on)
        half, stops = prompts * n, set(self.trainer.datamodule.stop_token_ids)
        paths, distilled = [], []
        for sample, context, answer in zip(samples[half:], contexts[half:], answers[half:], strict=True):
            k = objective.path_length(self.tokenizer, sample.token_ids, self.ravr.answer_cue)
            paths.append(replace(sample, token_ids=sample.token_ids[:k], logprobs=sample.logprobs[:k]))
            prompt = asked[sample.prompt_index - prompts]
            taught = context[len(prompt) :] + answer + [t for t in sample.token_ids[-1:] if t in stops]
            distilled.append(Sample(sample.prompt_index - prompts, taught, [0.0] * len(taught), "stop"))
        batch = assemble(asked, samples[:half] + paths + distilled, self.device)
        kind = torch.tensor([PRIOR] * half + [POSTERIOR] * half + [DISTILLED] * half, device=self.device)
        weights = objective.distillation_weights(prior, posterior).flatten() / prompts  # averaged over prompts
        batch.extras = {"kind": kind, "weight": torch.cat([torch.zeros(2 * half, device=self.device), weights])}
        batch.rewards = torch.cat([correct, correct[half:]])
        self.prepare(batch)
        sequence_advantages = torch.cat(
            [
                estimators.SEQUENCE_ESTIMATORS[self.algorithm.advantage](correct[:half], n),
                objective.posterior_advantages(prior, posterior).flatten().to(self.device),
                torch.zeros(half, device=self.device),
            ]
        )
        batch.advantages = estimators.expand_to_tokens(sequence_advantages, batch.response_mask)
        if not self.finite_advantages(batch):
            return None
        self.log_measurements(batch, asked, paths, prior, posterior, correct)
        return batch

    @torch.no_grad()
    def log_measurements(self, batch, asked, paths, prior, posterior, correct) -> None:
        """What the module docstring lists; KL(q‖p) from the posterior paths' log-likelihoods under both prompts."""
        prompts, half = len(asked) // 2, len(paths)
        again = assemble(asked, [replace(p, prompt_index=p.prompt_index - prompts) for p in paths], self.device)
        prior_logp = self.policy_logprobs(again)
        prior_logp = (prior_logp * again.response_mask).sum(-1)
        kind = batch.extras["kind"]
        posterior_logq = (batch.rollout_logprobs[kind == POSTERIOR] * batch.response_mask[kind == POSTERIOR]).sum(-1)
        self.log_dict(
            {
                "reward/mean": correct[:half].mean(),  # the prior's, as GRPO logs it
                "ravr/prior_accuracy": correct[:half].mean(),
                "ravr/posterior_accuracy": correct[half:].mean(),
                "ravr/mu": prior.mean(),
                "ravr/posterior_utility": posterior.mean(),
                "ravr/bayes_posterior_utility": torch.nanmean(estimated_posterior_utility(prior)),
                "ravr/kl": objective.sample_kl(posterior_logq, prior_logp),
                "ravr/distilled": (batch.extras["weight"][kind == DISTILLED] > 0).float().mean(),
            },
            prog_bar=False,
        )

    rows_per_sample = 3  # a prior completion, a posterior path, its distillation row

    def start_minibatch(self, minibatch: RolloutBatch) -> None:
        """The prior's and the posterior's policy-gradient terms are each aggregated over their own rows."""
        super().start_minibatch(minibatch)
        kind, mask = minibatch.extras["kind"], minibatch.response_mask
        minibatch.totals |= {"prior": Totals.of(mask[kind == PRIOR]), "posterior": Totals.of(mask[kind == POSTERIOR])}

    def objective(self, batch: RolloutBatch, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, kind = self.ravr, batch.extras["kind"]
        loss, logs = logprobs.sum() * 0.0, {}  # a minibatch may hold no row of a part
        for part, weight, name in ((PRIOR, c.prior_weight, "prior"), (POSTERIOR, c.posterior_weight, "posterior")):
            rows = kind == part
            if weight > 0 and rows.any():
                rows_of_part = batch.select(rows)
                rows_of_part.totals = None if batch.totals is None else {"response": batch.totals[name]}
                pg, stats = super().objective(rows_of_part, logprobs[rows])
                loss = loss + weight * pg
                logs[f"ravr/{name}_pg_loss"] = pg.detach()
                logs[f"policy/{name}_clip_fraction"] = stats["policy/clip_fraction"]
        rows = kind == DISTILLED
        if c.distill_weight > 0 and rows.any():
            nll = objective.weighted_path_nll(logprobs[rows], batch.response_mask[rows], batch.extras["weight"][rows])
            loss = loss + c.distill_weight * nll
            logs["ravr/distill_loss"] = nll.detach()
        logs["policy/pg_loss"] = loss.detach()
        return loss, logs
