"""AsyPPO (modules/asyppo.py) on the GRPO tests' bandit (reward 1 when the answer starts with "7", about 1 in 16
samples at first; the tiny arithmetic policy, 16 prompts x 8 responses a step), one process, the experiments of
the paper's ablations at this scale (notes §2.5):

- ``bandit``: PPO (one critic, a copy of the policy) vs AsyPPO with two small critics vs the same without masks;
- ``shards``: the critics' disagreement σ when each trains on its own shard vs when both train on all data;
- ``masks``: at UTD 4 (4 epochs x 2 minibatches a batch), the σ advantage mask vs a random mask of the same rate
  vs none;
- ``entropy``: an entropy bonus (0.01) filtered by σ vs a plain one;
- ``compare``: AsyPPO vs PPO with one critic of about the two small critics' combined size vs GRPO;
- ``cost``: beside a 19M-parameter actor (512 wide, 6 blocks), one actor-sized critic (PPO's) vs two small
  critics (128 wide, 2 blocks): peak memory (each arm in a process of its own) and seconds per training step.

Prints, per arm and seed: the mean reward of the last 20 steps, σ averaged over the run, and the policy's
entropy over the last 20 steps.

    python bench/asyppo.py --experiment masks --seeds 0,1,2
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.modules.asyppo import AsyPPOModule
from zoo.modules.grpo import GRPOModule
from zoo.modules.ppo import PPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip
SMALL_CRITIC = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
COMBINED_CRITIC = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)  # ~2x params


class _Record(L.Callback):
    """Every step's reward, mean σ and policy entropy."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"reward/mean": [], "asyppo/sigma_mean": [], "policy/entropy": []}

    def on_train_batch_end(self, trainer, module, *args) -> None:
        for key, values in self.history.items():
            if key in trainer.callback_metrics:
                values.append(float(trainer.callback_metrics[key]))


def run(module_class, steps: int, seed: int, **settings) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data = PromptDataModule(task="arithmetic", train_size=2000, val_size=16, batch_size=16, vocab_size=64, seed=seed)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("7"))
    optim = dict(lr=1e-3, warmup_steps=5, weight_decay=0.0)
    module = module_class(POLICY, optim=optim, rollout=dict(n=8, max_new_tokens=4), **settings)
    record = _Record()
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback(), record], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return record.history


def _asyppo(**asyppo) -> tuple:
    return AsyPPOModule, dict(asyppo=dict(critic_model=SMALL_CRITIC, critic_lr=3e-3, **asyppo))


UTD4 = dict(algorithm=dict(ppo_epochs=4, minibatch_size=64))  # four passes over the batch, two minibatches each
ENTROPY = dict(algorithm=dict(entropy_coef=0.01))
EXPERIMENTS = {  # name: {arm: (module class, settings)}
    "bandit": {
        "ppo": (PPOModule, {}),
        "asyppo, 2 small critics": _asyppo(),
        "same, no masks": _asyppo(advantage_mask=0.0, entropy_filter=0.0),
    },
    "shards": {  # (a) does training on disjoint shards make the critics disagree more?
        "disjoint shards": _asyppo(entropy_filter=0.0),
        "both on all data": _asyppo(entropy_filter=0.0, shard_mode="shared"),
    },
    "masks": {  # (b) at UTD 4: the σ mask against a random mask of the same rate and no mask
        "sigma mask": (AsyPPOModule, {**_asyppo(entropy_filter=0.0)[1], **UTD4}),
        "random mask": (AsyPPOModule, {**_asyppo(entropy_filter=0.0, mask_kind="random")[1], **UTD4}),
        "no mask": (AsyPPOModule, {**_asyppo(entropy_filter=0.0, advantage_mask=0.0)[1], **UTD4}),
    },
    "entropy": {  # (c) an entropy bonus filtered by σ against a plain one
        "sigma-filtered bonus": (AsyPPOModule, {**_asyppo(advantage_mask=0.0)[1], **ENTROPY}),
        "plain bonus": (AsyPPOModule, {**_asyppo(advantage_mask=0.0, entropy_filter=0.0)[1], **ENTROPY}),
    },
    "compare": {  # (d) against PPO with one critic of about the two small ones' size, and GRPO
        "asyppo, 2 small critics": _asyppo(),
        "ppo, 1 critic (2x params)": (
            AsyPPOModule,
            dict(
                asyppo=dict(
                    critics=1, critic_model=COMBINED_CRITIC, critic_lr=3e-3, advantage_mask=0.0, entropy_filter=0.0
                )
            ),
        ),
        "grpo": (GRPOModule, {}),
    },
}


ACTOR = dict(POLICY, hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048)
COST_ARMS = {  # the critics beside a 19M-parameter actor
    "one actor-sized critic": dict(critics=1, critic_model=None, advantage_mask=0.0, entropy_filter=0.0),
    "two small critics": dict(
        critics=2, critic_model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    ),
}


def cost(arm: str, steps: int) -> None:
    """Peak memory (the process's maximum resident set) and seconds per step of one arm, in a process of its own."""
    import json
    import resource
    import time

    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=2000, val_size=16, batch_size=16, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("7"))
    module = AsyPPOModule(ACTOR, optim=dict(lr=1e-4), rollout=dict(n=8, max_new_tokens=16), asyppo=COST_ARMS[arm])
    times = []

    class _Clock(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback(), _Clock()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    critic_parameters = sum(p.numel() for p in module.critics.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"arm": arm, "peak_mb": peak, "seconds_per_step": sorted(times[1:])[len(times[1:]) // 2],
                      "critic_parameters": critic_parameters}))  # fmt: skip


def compare_costs(steps: int) -> None:
    import json
    import subprocess
    import sys

    for arm in COST_ARMS:
        out = subprocess.run(
            [sys.executable, __file__, "--cost-arm", arm, "--steps", str(steps)], capture_output=True, text=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{arm:24s} critics {result['critic_parameters'] / 1e6:6.2f}M parameters, peak memory "
            f"{result['peak_mb']:7.0f} MB, {result['seconds_per_step']:.2f} s/step (median)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=[*EXPERIMENTS, "cost"], default="bandit")
    parser.add_argument("--cost-arm", choices=list(COST_ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    args = parser.parse_args()
    if args.cost_arm:
        return cost(args.cost_arm, args.steps)
    if args.experiment == "cost":
        return compare_costs(args.steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.experiment}: {args.steps} steps, seeds {seeds}; per seed: reward of the last 20 steps, mean σ, "
          "policy entropy of the last 20 steps")  # fmt: skip
    for name, (module_class, settings) in EXPERIMENTS[args.experiment].items():
        cells = []
        for seed in seeds:
            h = run(module_class, args.steps, seed, **settings)
            sigma = (
                sum(h["asyppo/sigma_mean"]) / len(h["asyppo/sigma_mean"]) if h["asyppo/sigma_mean"] else float("nan")
            )
            entropy = sum(h["policy/entropy"][-20:]) / 20 if h["policy/entropy"] else float("nan")
            cells.append(f"{sum(h['reward/mean'][-20:]) / 20:.2f} / {sigma:.4f} / {entropy:.2f}")
        print(f"{name:28s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
