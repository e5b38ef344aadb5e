"""Supervised fine-tuning on a task's worked solutions (:mod:`zoo.tasks.registry`): prompt masking and packing.

Every example is ``prompt + solution + EOS``, or with a chat template the conversation of system prompt, prompt
and solution (:mod:`zoo.text.chat`); the loss covers the solution and EOS (the assistant turn) only (every other
target is -100). Examples are packed whole, in a fixed order, into rows of ``seq_len`` tokens; each row carries
``segment_ids`` and ``position_ids`` that restart per example, so packed examples do not attend to each other
and see the positions they would see alone. With ``pack: false`` every example has a row of its own, padded at
the end (no segments: causal attention alone keeps it from the padding), for models that cannot isolate packed
examples (BLOOM's ALiBi, state-space models such as Mamba). An example longer than ``seq_len`` is an error
naming it. With ``budgets`` (:mod:`zoo.rl.methods.bard`) every problem becomes one example per budget level that its
teacher's chain can be compressed to: the same question, different budgets, different lengths (BARD's
budget-constrained SFT). With ``posterior_prompt`` every training problem is also taught under its
answer-conditioned prompt (:mod:`zoo.rl.methods.ravr_posterior_prompt`): the same solution, reached with the answer in
view, so that the policy learns to reason towards a given answer (the ability RAVR's posterior sampler relies on).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch.utils.data import Dataset

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import DataError, require_int
from zoo.models.cross_entropy import IGNORE_INDEX as IGNORE
from zoo.rl.methods.bard import with_budget
from zoo.tasks.base import Problem
from zoo.tasks.registry import TASKS, encode_prompts


def pack(
    examples: list[tuple[list[int], list[int]]], seq_len: int, packed: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Pack (inputs, targets) pairs of equal length into rows of ``seq_len``, first fit in order; or, not
    ``packed``, one pair per row (input_ids and targets only)."""
    rows, current = [], []
    for inputs, targets in examples:
        if len(inputs) > seq_len:
            raise DataError(f"an example of {len(inputs)} tokens does not fit data.seq_len={seq_len}")
        if current and (not packed or sum(len(i) for i, _ in current) + len(inputs) > seq_len):
            rows.append(current)
            current = []
        current.append((inputs, targets))
    if current:
        rows.append(current)
    out = []
    for row in rows:
        pad = seq_len - sum(len(i) for i, _ in row)
        tensors = {
            "input_ids": torch.tensor([t for i, _ in row for t in i] + [0] * pad),
            "targets": torch.tensor([t for _, y in row for t in y] + [IGNORE] * pad),
        }
        if packed:
            tensors["position_ids"] = torch.tensor([p for i, _ in row for p in range(len(i))] + list(range(pad)))
            tensors["segment_ids"] = torch.tensor([s for s, (i, _) in enumerate(row) for _ in i] + [len(row)] * pad)
        out.append(tensors)
    return out


class _Rows(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


class SFTDataModule(PromptDataModule):
    """The task's problems and tokenizer as :class:`PromptDataModule` has them, served as packed examples."""

    collate = None  # rows of tensors: the default collation

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
        seq_len: int = 128,
        batch_size: int = 16,
        seed: int = 1234,
        chat_template: str = "auto",
        system_prompt: str | None = None,
        pack: bool = True,
        budgets: dict[str, Any] | None = None,
        posterior_prompt: str | None = None,
        reward: str | None = None,
    ) -> None:
        require_int("data.seq_len", seq_len, 1)
        super().__init__(
            task, options, path, val_path, tokenizer, vocab_size, train_size, val_size, batch_size, seed,
            chat_template, system_prompt, budgets, posterior_prompt, reward,
        )  # fmt: skip
        self.save_hyperparameters()

    def budgeted(self, train: list[Problem], val: list[Problem]) -> tuple[list[Problem], list[Problem]]:
        """Budget-constrained SFT (BARD's contrastive set): every problem once per level it fits, the teacher's
        chain compressed to that level (:func:`zoo.rl.methods.bard.compress`)."""

        def expand(problems: list[Problem]) -> list[Problem]:
            asked = (with_budget(p, b, self.count_tokens) for p in problems for b in self.budgets.levels)
            return [p for p in asked if p is not None]

        return expand(train), expand(val)

    def examples(self, problems: list[Problem]) -> list[tuple[list[int], list[int]]]:
        """(inputs, targets) per problem: targets are the next tokens, -100 where the prompt is predicted."""
        if self.chat is not None:
            if TASKS[self.hparams.task].observation is not None:
                raise DataError(
                    f"SFT of task {self.hparams.task!r} masks environment observations without a chat template only: "
                    "set data.chat_template=none"
                )
            out = []
            for problem in problems:
                sequence, labels = self.chat.example(problem.prompt, problem.solution)
                out.append((sequence[:-1], labels[1:]))
            return out
        prompts = self.tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        out = []
        for prompt, problem in zip(prompts, problems, strict=True):
            solution, trained = self.solution_tokens(problem.solution)
            sequence = prompt + solution + [eos]
            targets = [t if keep else IGNORE for t, keep in zip(solution, trained, strict=True)]
            labels = [IGNORE] * len(prompt) + targets + [eos]
            out.append((sequence[:-1], labels[1:]))
        return out

    def solution_tokens(self, solution: str) -> tuple[list[int], list[bool]]:
        """A solution's tokens and which are trained on: all, or, for a task with environment observations (the
        search agent's retrieved passages), the agent's own text only; each piece tokenized on its own, as the
        multi-turn rollout tokenizes turns and observations."""
        pattern = TASKS[self.hparams.task].observation
        if pattern is None:
            tokens = self.tokenizer(solution, add_special_tokens=False)["input_ids"]
            return tokens, [True] * len(tokens)
        tokens, trained, start = [], [], 0
        for match in [*re.finditer(pattern, solution, re.DOTALL), None]:
            pieces = [(solution[start : match.start() if match else len(solution)], True)]
            if match:
                pieces.append((match.group(), False))
                start = match.end()
            for text, own in pieces:
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
                tokens += ids
                trained += [own] * len(ids)
        return tokens, trained

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        h = self.hparams
        train = self.train_problems
        if self.posterior_template is not None:
            train = train + [Problem(self.posterior_text(p), p.reference, p.solution) for p in train]
        self.train_set = _Rows(pack(self.examples(train), h.seq_len, h.pack))
        self.val_set = _Rows(pack(self.examples(self.val_problems), h.seq_len, h.pack))
        self.val_prompts = encode_prompts(self.tokenizer, self.val_problems, self.chat)  # for pass@k
