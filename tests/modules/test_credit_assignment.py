"""The credit stage inside the RL modules: off (q = 0 or γ_amp = 1) it changes nothing, bit for bit; on, every RL
module runs it from the command line and logs what it amplified."""

import json

import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def _weights_after(cpu_trainer, steps=3, **module):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(len(c) % 2)  # any reward that varies within a group
    grpo = GRPOModule(POLICY, optim=dict(lr=1e-2, warmup_steps=1), rollout=dict(n=4, max_new_tokens=6), **module)
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback()])
    trainer.fit(grpo, datamodule=data)
    return {k: v.clone() for k, v in grpo.model.state_dict().items()}, trainer.callback_metrics


def test_credit_that_selects_nothing_changes_nothing_and_credit_that_does_changes_the_update(cpu_trainer):
    plain, metrics = _weights_after(cpu_trainer)
    assert metrics["reward/std"] > 0  # the updates are not empty
    options = dict(horizon=[1, 4], window=2)
    for off in (dict(q=0.0), dict(gamma_amp=1.0)):
        same, metrics = _weights_after(cpu_trainer, credit="coupled", credit_options={**options, **off})
        assert all(torch.equal(plain[k], same[k]) for k in plain)
        assert metrics["credit/mean_gamma"] == 1
    shaped, metrics = _weights_after(cpu_trainer, credit="coupled", credit_options=options)
    assert not all(torch.equal(plain[k], shaped[k]) for k in plain)
    assert 0 < metrics["credit/amplified"] < 1 and metrics["credit/mean_gamma"] > 1


@pytest.mark.parametrize(
    ("method", "strategy"), [("grpo", "coupled"), ("ppo", "local"), ("asyppo", "global"), ("grpo", "random")]
)
def test_every_rl_module_takes_a_credit_strategy_from_the_command_line(run_zoo, tmp_path, method, strategy):
    run_zoo(
        "fit",
        f"method={method}",
        "model.hidden_size=32",
        "model.num_hidden_layers=3",
        "model.num_attention_heads=2",
        "model.intermediate_size=64",
        "data.vocab_size=64",
        "data.train_size=100",
        "data.batch_size=4",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "module.rollout.n=4",
        "module.rollout.max_new_tokens=6",
        f"module.credit={strategy}",
        "module.credit_options.horizon=[1,4]",
        "module.credit_options.window=3",
    )
    (hydra,) = list((tmp_path / "runs" / method).rglob(".hydra"))
    metrics = json.loads((hydra.parent / "metrics.json").read_text())
    assert 0 < metrics["credit/amplified"] < 1 and metrics["credit/mean_gamma"] > 1
    if strategy != "random":  # the attention pass also gives the entropies
        assert 0 <= metrics["credit/high_entropy_overlap"] <= 1


def test_an_unknown_strategy_is_one_line(run_zoo):
    process = run_zoo("fit", "method=grpo", "module.credit=anchor", check=False)
    assert process.returncode != 0
    assert "unknown module.credit 'anchor'" in process.stderr.strip().splitlines()[-1]
