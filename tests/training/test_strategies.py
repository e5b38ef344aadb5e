"""Distributed strategies on CPU: FSDP2 over 2 gloo processes really shards the weights and trains."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.models import block_classes
from zoo.models.gpt_neox import Block, GPTNeoXConfig
from zoo.training.strategies import fsdp


def test_every_model_family_exposes_its_blocks():
    assert Block in block_classes()


def test_fsdp1_wraps_each_block_of_zoo_and_hf_models(hf_models):
    from zoo.models.hf import HFCausalLM, HFConfig

    strategy = fsdp(activation_checkpointing=True)
    policy = strategy.kwargs["auto_wrap_policy"]
    block = Block(GPTNeoXConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, intermediate_size=32))
    assert policy(module=block, recurse=False, nonwrapped_numel=0)
    assert not policy(module=block.mlp, recurse=False, nonwrapped_numel=0)
    hf = HFCausalLM(HFConfig(path=str(hf_models["llama"])))  # asked after the model is built, as FSDP does
    layers = list(hf.hf.model.layers)
    assert len(layers) == 2 and all(policy(module=layer, recurse=False, nonwrapped_numel=0) for layer in layers)
    assert not policy(module=hf.hf.model.norm, recurse=False, nonwrapped_numel=0)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_cpu_processes_train(run_zoo, tiny, tmp_path, strategy):
    process = run_zoo(
        "fit",
        *tiny,
        f"strategy={strategy}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        f"name={strategy}",
        timeout=600,
    )
    if strategy == "fsdp2":  # the weights are really sharded: each rank holds about half of them
        log = process.stdout + process.stderr
        pattern = r"rank (\d) holds (\d+) of (\d+) parameters"
        holdings = {int(r): (int(a), int(b)) for r, a, b in re.findall(pattern, log)}
        assert set(holdings) == {0, 1}
        total = holdings[0][1]
        assert holdings[0][0] + holdings[1][0] == total and max(holdings[0][0], holdings[1][0]) < 0.6 * total
    (hydra,) = list((tmp_path / "runs" / strategy).rglob(".hydra"))
    assert json.loads((hydra.parent / "metrics.json").read_text())["global_step"] == 60
    events = EventAccumulator(str(hydra.parent / "tb"))
    events.Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 2 and val[1] < val[0] < math.log(512)  # falling from the uniform guess


@pytest.mark.slow
def test_fsdp2_shards_a_hugging_face_policy_and_its_critic(run_zoo, hf_models, tmp_path):
    """PPO on 2 CPU processes with a transformers Qwen2: policy and critic each sharded by decoder layer; the
    consolidated checkpoint publishes to the hub like a single-process run's."""
    process = run_zoo(
        "fit", "method=ppo", f"model.init_from={hf_models['qwen2']}", "strategy=fsdp2", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.max_steps=3", "trainer.val_check_interval=3", "data.train_size=200",
        "data.val_size=8", "data.batch_size=4", "module.algorithm.kl_coef=0.05", "probes.every_n_steps=0", "name=ppo",
        timeout=600,
    )  # fmt: skip
    log = process.stdout + process.stderr
    holdings = re.findall(r"fsdp2: 2 blocks sharded over 2 ranks; rank (\d) holds (\d+) of (\d+) parameters", log)
    assert sorted(r for r, _, _ in holdings) == ["0", "0", "1", "1"]  # the policy and the critic on each rank
    assert all(int(held) < 0.6 * int(total) for _, held, total in holdings)
    (run,) = (tmp_path / "runs" / "ppo").iterdir()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 3
    assert "pushed ppo-fsdp2" in run_zoo("hub", "push", str(run), "--name", "ppo-fsdp2").stdout


@pytest.mark.slow
def test_ddp_micro_batches_all_reduce_once_a_minibatch_and_keep_the_ranks_equal(zoo_env, tmp_path):
    """Under DDP the micro-batches of a minibatch accumulate locally (no_sync) and the last one all-reduces the sum:
    as many all-reduces as without micro-batches (one per minibatch), both ranks hold the same weights after every
    step, and the same as without micro-batches (to float rounding)."""
    script = Path(__file__).with_name("ddp_rl_steps.py")
    checksums, buckets = {}, {}
    for micro in ("3", "none"):
        out = subprocess.run([sys.executable, str(script), micro], cwd=tmp_path, env=zoo_env, capture_output=True,
                             text=True, timeout=300, check=True).stdout  # fmt: skip
        found = re.findall(r"rank (\d) step (\d+) weights (-?\d+\.\d{12})", out)
        by_step = {}
        for rank, step, value in found:
            by_step.setdefault(int(step), {})[int(rank)] = float(value)
        assert sorted(by_step) == [2, 4] and all(set(ranks) == {0, 1} for ranks in by_step.values())
        assert all(ranks[0] == ranks[1] for ranks in by_step.values())  # the ranks' gradients were all-reduced
        checksums[micro] = by_step
        buckets[micro] = {int(r): int(n) for r, n in re.findall(r"rank (\d) all-reduced (\d+) buckets", out)}
    assert buckets["3"] == buckets["none"] and buckets["3"][0] > 0  # 3 micro-batches a minibatch, one all-reduce
    for step in (2, 4):
        assert checksums["3"][step][0] == pytest.approx(checksums["none"][step][0], rel=1e-6)
