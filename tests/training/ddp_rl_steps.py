"""Run by tests/training/test_strategies.py as its own two-process DDP job: four GRPO optimizer steps of a tiny policy
(minibatches of 8 rows, micro-batches of ``sys.argv[1]`` rows or none), printing each rank's weight checksum after
every training step, and how many gradient buckets its DDP all-reduced."""

import sys

import lightning as L
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from zoo.datamodules.prompts import PromptDataModule
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback


class Checksum(L.Callback):
    def __init__(self):
        self.buckets = {"buckets": 0}

    def on_fit_start(self, trainer, module):
        trainer.strategy.model.register_comm_hook(self.buckets, counted_allreduce)  # Lightning's hook option is CUDA's

    def on_train_batch_end(self, trainer, module, *args):
        total = torch.stack([p.detach().double().sum() for p in module.model.parameters()]).sum()
        print(f"rank {trainer.global_rank} step {trainer.global_step} weights {total.item():.12f}", flush=True)


def counted_allreduce(state: dict, bucket):
    state["buckets"] += 1
    return allreduce_hook(None, bucket)


if __name__ == "__main__":
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=40, val_size=4, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(len(c) % 2)  # varies within a group
    policy = dict(arch="gpt_neox", vocab_size=len(data.tokenizer), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    micro = None if sys.argv[1] == "none" else int(sys.argv[1])
    module = GRPOModule(policy, optim=dict(lr=1e-2, warmup_steps=0), rollout=dict(n=4, max_new_tokens=8),
                        algorithm=dict(micro_batch_size=micro, minibatch_size=8))  # fmt: skip
    checksum = Checksum()
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=4, limit_val_batches=0, logger=False,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[RolloutCallback(), checksum])  # fmt: skip
    trainer.fit(module, datamodule=data)
    print(f"rank {trainer.global_rank} all-reduced {checksum.buckets['buckets']} buckets", flush=True)
