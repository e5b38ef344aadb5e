"""Prompts of a verifiable task for RL (:mod:`zoo.tasks.registry`): each batch is a list of problems, ``batch_size``
prompts per optimizer step, each with its tokenized prompt and its reference answer.

The tokenizer is the policy's (``tokenizer``; ``zoo fit`` passes the one of ``model.init_from`` or of an hf
model); without one, a BPE of ``vocab_size`` is trained on the task's text. When the tokenizer has a chat
template (``chat_template: auto``), prompts are chat-formatted with the task's system prompt or
``system_prompt`` (:mod:`zoo.text.chat`), and generation stops at the template's end of turn as well as at EOS
(:attr:`PromptDataModule.stop_token_ids`). The training order is seeded and resumable
(:class:`zoo.text.loader.ResumableLoader`).

``budgets`` (a task with chains of thought: ``thinking``) asks every prompt under a thinking budget
(:mod:`zoo.rl.methods.bard`): ``{levels: [...], fidelity: upper | tracking, sigma, combine: product | sum, weight}``;
each training prompt gets one level drawn for it, every validation prompt is asked at every level, and the reward
becomes correctness × budget fidelity (``correctness``, the task's verifier, still decides pass@k).

``posterior_prompt`` (a template with ``{prompt}`` and ``{answer}``, :mod:`zoo.rl.methods.ravr_posterior_prompt`) gives
every training problem a second, answer-conditioned prompt as well (``posterior_ids``, with the reference's final answer
as ``answer``), for RAVR's posterior sampler.

``reward`` replaces the task's own check, for the reward and for what pass@k counts: a name (``exact_match``,
``math_verify``, ``gsm8k``) or ``package.module:function`` (:func:`zoo.rl.rewards.reward_function`); e.g. math-verify's
final-answer check for a chat model that answers in sentences where the task's exact match wants the number alone.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from zoo.errors import ConfigError, DataError, require_int
from zoo.io.files import cache_dir
from zoo.rl.methods.bard import BudgetOptions, budget_line, with_budget
from zoo.rl.methods.ravr_posterior_prompt import check_template, posterior_prompt
from zoo.rl.rewards import reward_function
from zoo.tasks.base import Problem
from zoo.tasks.registry import TASKS, encode_prompts, encode_texts, load_problems
from zoo.text.chat import chat_format
from zoo.text.loader import ResumableLoader
from zoo.text.tokenizer import tokenizer_for


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


class PromptDataModule(L.LightningDataModule):
    def __init__(
        self,
        task: str = "arithmetic",
        options: dict[str, Any] | None = None,
        path: str | None = None,
        val_path: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 512,
        train_size: int = 20000,
        val_size: int = 200,
        batch_size: int = 16,
        seed: int = 1234,
        chat_template: str = "auto",
        system_prompt: str | None = None,
        budgets: dict[str, Any] | None = None,
        posterior_prompt: str | None = None,
        reward: str | None = None,
    ) -> None:
        super().__init__()
        require_int("data.batch_size", batch_size, 1)
        self.budgets = BudgetOptions.from_dict(budgets) if budgets is not None else None
        self.posterior_template = check_template(posterior_prompt) if posterior_prompt is not None else None
        if reward is not None and budgets is not None:
            raise ConfigError("data.reward replaces the task's check; with data.budgets the reward is the budget's own")
        self.check = reward_function(reward) if reward is not None else None
        require_int("data.train_size", train_size, 1)
        require_int("data.val_size", val_size, 0)
        self.save_hyperparameters()
        self.tokenizer = None
        self.chat = None  # the chat format of prompts, if any (zoo.text.chat)
        self.reward = None  # what trains the policy
        self.correctness = None  # the task's verifier: what pass@k counts (zoo.rl.evaluation)
        self.train_problems: list[Problem] = []
        self.val_problems: list[Problem] = []
        self.val_questions: list[Problem] = []  # the validation problems before any budget is set

    def prepare_data(self) -> None:
        if self.tokenizer is not None:
            return
        h = self.hparams
        self.train_problems, self.val_problems = load_problems(
            h.task, h.path, h.val_path, h.train_size, h.val_size, h.seed, h.options
        )
        texts = [p.prompt + p.solution for p in self.train_problems]
        if self.budgets is not None:  # the control lines are part of the task's text
            if not all(p.thoughts for p in self.train_problems + self.val_problems):
                raise DataError(f"data.budgets: task {h.task!r} has no chains of thought to budget (task: thinking)")
            texts += [budget_line(b) for b in self.budgets.levels]
        texts += [self.posterior_text(p) for p in self.train_problems] if self.posterior_template else []
        self.tokenizer = tokenizer_for(h.tokenizer, texts, h.vocab_size, cache_dir() / "tokenizers")
        self.reward = self.correctness = self.check or TASKS[h.task].reward
        self.val_questions = list(self.val_problems)
        if self.budgets is not None:
            self.reward = self.budgets.reward(self.count_tokens)
            self.train_problems, self.val_problems = self.budgeted(self.train_problems, self.val_problems)
        self.chat = chat_format(self.tokenizer, h.chat_template, h.system_prompt or TASKS[h.task].system)

    def final_answer(self, reference: str) -> str:
        """The answer a reference states (the task's :attr:`zoo.tasks.base.Task.final_answer`)."""
        return TASKS[self.hparams.task].final_answer(reference)

    def posterior_text(self, problem: Problem) -> str:
        """The answer-conditioned prompt of ``problem`` (``posterior_prompt`` set): its final answer in view."""
        return posterior_prompt(self.posterior_template, problem.prompt, self.final_answer(problem.reference))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def budgeted(self, train: list[Problem], val: list[Problem]) -> tuple[list[Problem], list[Problem]]:
        """RL prompts under thinking budgets: each training prompt with one level drawn for it (seeded), each
        validation prompt at every level (for accuracy and adherence per budget)."""
        rng = random.Random(self.hparams.seed)
        levels = self.budgets.levels
        return [with_budget(p, rng.choice(levels)) for p in train], [with_budget(p, b) for p in val for b in levels]

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Where a completion ends: EOS, and the chat template's end of turn."""
        self.prepare_data()
        return self.chat.stop_token_ids if self.chat is not None else (self.tokenizer.eos_token_id,)

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return len(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.train_set = encode_prompts(self.tokenizer, self.train_problems, self.chat)
        if self.posterior_template is not None:
            texts = [self.posterior_text(p) for p in self.train_problems]
            for item, ids in zip(self.train_set, encode_texts(self.tokenizer, texts, self.chat), strict=True):
                item["posterior_ids"], item["answer"] = ids, self.final_answer(item["reference"])
        self.val_set = encode_prompts(self.tokenizer, self.val_problems, self.chat)
        self.val_prompts = self.val_set  # for pass@k, under the name the SFT data uses

    collate = staticmethod(_as_list)  # problems stay a list of dicts (SFT rows use the default collation)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return ResumableLoader.for_trainer(self.train_set, h.batch_size, h.seed, self.trainer, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, collate_fn=self.collate)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
