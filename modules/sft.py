"""Supervised fine-tuning of a policy on a task's worked solutions (``zoo.datamodules.sft``): the pretraining
step on packed, prompt-masked examples, and after every validation the policy's pass@k on the validation
prompts (greedy by default), scored by the task's reward: ``val/pass@1``, ``val/reward``, ``val/length``.

This is the first link of zoo's chain: pretrain → SFT → RL, each step's checkpoint passed on through the hub
(``zoo hub push`` then ``model.init_from=hub:NAME``).
"""

from __future__ import annotations

from typing import Any

from zoo.modules.pretrain import PretrainModule
from zoo.rl.evaluation import evaluate_on_validation_prompts


class SFTModule(PretrainModule):
    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        compile: bool = False,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optim, compile)
        self.save_hyperparameters()
        self.evaluation = {"n": 1, "ks": [1], "temperature": 0.0, "max_new_tokens": 64, **(evaluation or {})}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.evaluation["n"]:
            return
        results = evaluate_on_validation_prompts(self.model, self.trainer.datamodule, self.evaluation)
        for name, values in results.items():
            self.log(f"val/{name}", values.mean())
