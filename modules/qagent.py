"""QAgent (Jiang et al. 2025, arXiv:2510.08383): a search agent trained with GRPO, end to end (stage 1) and then
as a retrieval module for a frozen reader (stage 2). Notes §5.

The policy's trajectories come from the rollout callback's multi-turn sampler with the search environment
(``rollout.agent.environment: search``, :mod:`zoo.envs.search`): plan, search (≤ 3 queries), information (masked
out of the loss), reflection, ... answer. This module replaces the score stage only (the environment gives no
reward): ``reward_stage: 1`` scores ``1[format] · EM_strict(last answer)``; ``reward_stage: 2`` scores
``EM(reader(question, passages)) + 0.5 · Hit(passages)`` with the frozen ``reader`` (``extractive``, or any model
source: ``hub:NAME``, a run directory, a Hugging Face model directory; :mod:`zoo.search.readers`) reading the
passages the environment returned in the trajectory, deduplicated (:mod:`zoo.search.rewards`): an
``<information>`` block the policy writes itself earns nothing.

The paper's GRPO settings are ``configs/module/qagent.yaml``'s defaults where they fit a tiny model: G = 5, clip
0.2, KL 0.001 (k3, in the loss), all-equal groups skipped, token-mean per sequence (``seq_mean_token_mean``);
the learning rate is a tiny model's (the paper's 1e-6 is a 3B model's).

Validation (``zoo validate`` or every ``val_check_interval``) rolls the policy out greedily on the validation
questions and logs, under ``val/``: the end-to-end ``em`` (strict), ``f1`` and ``format``, ``pass@1`` (the stage-1
reward > 0.5), ``reward`` (this stage's), ``searches`` and ``turns``; the agent as a submodule, its passages to the
frozen reader: ``hit`` (the gold answer in the passages the environment returned, ``top_k`` a query: Hit@top_k;
the same Hit as the stage-2 reward's, :func:`zoo.search.rewards.hit`),
``em_without_hit`` (the share answered right although the passages lack the gold: from memory or by guessing, the
"utilisation hacking" that notes §5.8 asks about),
``reader_em`` (non-strict, the paper's), ``reader_f1``; and the baselines on the same questions and reader:
``vanilla_reader_em`` / ``_f1`` (no passages) and ``naive_rag_hit`` / ``_reader_em`` / ``_reader_f1`` (the
question itself as the one query, ``naive_top_k`` passages: 5 as the paper's one-shot baselines).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torchmetrics.aggregation import MeanMetric

from zoo.errors import ConfigError, ZooError, require_int
from zoo.generation.sampling import SamplingParams
from zoo.modules.grpo import GRPOModule
from zoo.rl.rewards import RewardBatch
from zoo.rl.rollout import Round, environment_text
from zoo.search.corpus import Passage
from zoo.search.readers import build_reader
from zoo.search.rewards import cover_match, exact_match, hit, stage1_reward, stage2_reward, token_f1
from zoo.search.tags import format_ok, last_answer, retrieved_passages
from zoo.search.task import golds_of, question_of
from zoo.training.quantization import check_bits

VALIDATION_METRICS = (
    "em", "f1", "format", "searches", "turns", "hit", "em_without_hit", "reader_em", "reader_f1",
    "vanilla_reader_em", "vanilla_reader_f1", "naive_rag_hit", "naive_rag_reader_em", "naive_rag_reader_f1",
)  # fmt: skip


class QAgentModule(GRPOModule):
    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
        algorithm: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        credit: str = "none",
        credit_options: dict[str, Any] | None = None,
        reward_stage: int = 1,
        reader: str = "extractive",
        reader_max_new_tokens: int = 8,
        naive_top_k: int = 5,
        reader_quantization: str | None = None,
    ) -> None:
        super().__init__(model, optim, rollout, algorithm, evaluation, credit, credit_options)
        if reward_stage not in (1, 2):
            raise ConfigError(f"module.reward_stage must be 1 or 2, got {reward_stage!r}")
        require_int("module.reader_max_new_tokens", reader_max_new_tokens, 1)
        require_int("module.naive_top_k", naive_top_k, 1)
        self.reader_quantization = check_bits("module.reader_quantization", reader_quantization)
        if reader_quantization is not None and reader == "extractive":
            raise ConfigError(
                "module.reader_quantization holds a model reader in 8 or 4 bits: module.reader=extractive has no model"
            )
        self.reward_stage, self.reader_spec = reward_stage, reader
        self.reader_max_new_tokens, self.naive_top_k = reader_max_new_tokens, naive_top_k
        self.reader = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        agent = self.rollout_callback.agent
        if agent is None or not getattr(agent.environment_class(), "scored_by_module", False):
            raise ConfigError("QAgent trains with rollout.agent.environment=search (method=qagent sets it)")
        try:
            self.reader = build_reader(
                self.reader_spec, self.reader_max_new_tokens, self.device, self.reader_quantization
            )
        except ZooError as error:
            raise ConfigError(f"module.reader={self.reader_spec}: {error}") from error
        for name in VALIDATION_METRICS:
            self.val_metrics[name] = MeanMetric()

    # -- stage 2: rewards of whole trajectories ---------------------------------------------------------
    def read(self, questions: list[str], passages: list[list[Passage]]) -> list[str]:
        try:
            return self.reader(questions, passages)
        except Exception as error:
            raise ConfigError(f"module.reader {self.reader_spec!r} failed: {type(error).__name__}: {error}") from error

    def score(self, step: Round) -> RewardBatch:
        asked = [step.problems[i] for i in step.batch.prompt_index.tolist()]
        texts, golds = step.texts, [golds_of(p["reference"]) for p in asked]
        passages = [retrieved_passages(o) for o in step.observations]  # the environment's, not the policy's text
        end_to_end = [stage1_reward(t, g) for t, g in zip(texts, golds, strict=True)]
        parts = {
            "stage1": torch.tensor(end_to_end),
            "format": torch.tensor([float(format_ok(t)) for t in texts]),
            "hit": torch.tensor([hit(p, g) for p, g in zip(passages, golds, strict=True)]),
            "searches": torch.tensor([float(t.count("<search>")) for t in texts]),
        }
        if self.reward_stage == 1:
            return RewardBatch(parts["stage1"], parts)
        answers = self.read([question_of(p["prompt"]) for p in asked], passages)
        scores = [stage2_reward(a, p, g) for a, p, g in zip(answers, passages, golds, strict=True)]
        parts["reader_em"] = torch.tensor([cover_match(a, g) for a, g in zip(answers, golds, strict=True)])
        return RewardBatch(torch.tensor(scores), parts)

    # -- evaluation -------------------------------------------------------------------------------------
    def validation_step(self, problems: list[dict[str, Any]], batch_idx: int) -> None:
        e, callback = self.evaluation, self.rollout_callback
        params = SamplingParams(
            e.max_new_tokens, e.temperature, stop_token_ids=self.trainer.datamodule.stop_token_ids, seed=batch_idx
        )
        agent = replace(callback.agent, redundancy=0)
        outcome = agent.rollout(callback.engine, problems, params, self.tokenizer, 1, len(problems))
        samples = outcome.samples()
        texts = [self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
        kept = [problems[g] for g in outcome.groups]
        golds = [golds_of(p["reference"]) for p in kept]
        questions = [question_of(p["prompt"]) for p in kept]
        passages = [retrieved_passages(environment_text(s, self.tokenizer)) for s in samples]
        environment = agent.make_environment(kept[0], 0)
        naive = environment.retriever.search(questions, self.naive_top_k)
        read = self.read(questions, passages)
        vanilla = self.read(questions, [[] for _ in questions])
        naive_read = self.read(questions, naive)
        answers = [last_answer(t) or "" for t in texts]
        values = {
            "em": [exact_match(a, g) for a, g in zip(answers, golds, strict=True)],
            "f1": [token_f1(a, g) for a, g in zip(answers, golds, strict=True)],
            "format": [float(format_ok(t)) for t in texts],
            "pass@1": [float(stage1_reward(t, g) > 0.5) for t, g in zip(texts, golds, strict=True)],
            "searches": [float(t.count("<search>")) for t in texts],
            "turns": [float(t.turns) for t in outcome.trajectories],
            "length": [float(len(s.token_ids)) for s in samples],
            "hit": [hit(found, g) for found, g in zip(passages, golds, strict=True)],
            "reader_em": [cover_match(a, g) for a, g in zip(read, golds, strict=True)],
            "reader_f1": [token_f1(a, g) for a, g in zip(read, golds, strict=True)],
            "vanilla_reader_em": [cover_match(a, g) for a, g in zip(vanilla, golds, strict=True)],
            "vanilla_reader_f1": [token_f1(a, g) for a, g in zip(vanilla, golds, strict=True)],
            "naive_rag_hit": [hit(found, g) for found, g in zip(naive, golds, strict=True)],
            "naive_rag_reader_em": [cover_match(a, g) for a, g in zip(naive_read, golds, strict=True)],
            "naive_rag_reader_f1": [token_f1(a, g) for a, g in zip(naive_read, golds, strict=True)],
        }
        # right answers whose passages lack the gold: from memory, or guessed
        values["em_without_hit"] = [em * (1 - h) for em, h in zip(values["em"], values["hit"], strict=True)]
        if self.reward_stage == 1:
            values["reward"] = values["pass@1"]
        else:
            values["reward"] = [stage2_reward(a, p, g) for a, p, g in zip(read, passages, golds, strict=True)]
        for name, value in values.items():
            if name in self.val_metrics:
                self.val_metrics[name].update(torch.tensor(value))
