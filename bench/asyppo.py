"""AsyPPO (modules/asyppo.py) against PPO on the GRPO tests' bandit: reward 1 when the answer starts with "7" (about
1 in 16 samples at first), the tiny arithmetic policy, 16 prompts x 8 responses a step, one process. Prints the
mean reward over windows of 20 steps for PPO (one critic, a copy of the policy), AsyPPO with two small critics
built from scratch, and the same critics without the σ masks.

    python bench/asyppo.py [--steps 200] [--seed 0]
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from zoo.callbacks.rollout import RolloutCallback
from zoo.datamodules.prompts import PromptDataModule
from zoo.modules.asyppo import AsyPPOModule
from zoo.modules.ppo import PPOModule

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip
SMALL_CRITIC = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


class _Rewards(L.Callback):
    def __init__(self) -> None:
        self.history: list[float] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.history.append(float(trainer.callback_metrics["reward/mean"]))


def run(module_class, steps: int, seed: int, **settings) -> list[float]:
    torch.manual_seed(seed)
    data = PromptDataModule(task="arithmetic", train_size=2000, val_size=16, batch_size=16, vocab_size=64, seed=seed)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("7"))
    optim = dict(lr=1e-3, warmup_steps=5, weight_decay=0.0)
    module = module_class(POLICY, optim=optim, rollout=dict(n=8, max_new_tokens=4), **settings)
    record = _Rewards()
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback(), record], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return [sum(record.history[i : i + 20]) / 20 for i in range(0, steps, 20)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arms = {
        "ppo": (PPOModule, {}),
        "asyppo, 2 small critics": (AsyPPOModule, dict(asyppo=dict(critic_model=SMALL_CRITIC, critic_lr=3e-3))),
        "same, no masks": (
            AsyPPOModule,
            dict(asyppo=dict(critic_model=SMALL_CRITIC, critic_lr=3e-3, advantage_mask=0.0, entropy_filter=0.0)),
        ),
    }
    for name, (module_class, settings) in arms.items():
        windows = run(module_class, args.steps, args.seed, **settings)
        print(f"{name:24s} " + " ".join(f"{w:.2f}" for w in windows))


if __name__ == "__main__":
    main()
