"""Distributed strategies on CPU: FSDP2 over 2 gloo processes really shards the weights and trains."""

import json
import math
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.models.gpt_neox import Block, GPTNeoXConfig
from zoo.strategies import block_classes, fsdp


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
