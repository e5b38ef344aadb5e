"""Per-budget metrics during training (BARD), for data with ``data.budgets``: after every validation, the policy's
greedy answers to the validation questions at every budget level (:mod:`zoo.rl.methods.bard_evaluation`), logged as
``budget/{b}/accuracy``, ``budget/{b}/length``, ``budget/{b}/within_budget``, ``budget/{b}/relative_error`` and
``budget/length_correlation``. ``zoo budget RUN`` gives the same table, with the truncation baseline and a plot.
"""

from __future__ import annotations

import math

import lightning as L

from zoo.generation import in_place_engine
from zoo.rl.methods.bard_evaluation import evaluate_budgets, length_correlation


class BudgetMetrics(L.Callback):
    def __init__(self, questions: int = 64) -> None:
        self.questions = questions

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if trainer.sanity_checking or getattr(data, "budgets", None) is None or not data.val_questions:
            return
        evaluation = getattr(pl_module, "evaluation", None)  # SFT keeps a dict, the RL modules a dataclass
        if isinstance(evaluation, dict):
            max_new_tokens = evaluation.get("max_new_tokens", 160)
        else:
            max_new_tokens = getattr(evaluation, "max_new_tokens", 160)
        results = evaluate_budgets(
            in_place_engine(pl_module.model, data.tokenizer),
            data.tokenizer,
            data.val_questions[: self.questions],
            data.budgets.levels,
            max_new_tokens,
            data.stop_token_ids,
            truncation=False,
            prompt_ids=data.chat.prompt_ids if data.chat is not None else None,
        )
        logs = {}
        for r in results:
            for name in ("accuracy", "length", "within_budget", "relative_error"):
                logs[f"budget/{r.budget}/{name}"] = float(getattr(r, name))
        correlation = length_correlation(results)
        if not math.isnan(correlation):
            logs["budget/length_correlation"] = correlation
        pl_module.log_dict(logs)
