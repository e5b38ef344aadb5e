"""The RL batch plan (zoo/rl/batch_plan.py): its figures follow from the settings, an inconsistent combination is
one line naming the settings, and every RL fit prints it before the first rollout."""

import logging

import pytest

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.grpo import GRPOModule
from zoo.rl.batch_plan import BatchPlan
from zoo.rollout.callback import RolloutCallback


def _plan(**settings):
    base = dict(prompts=8, n=4, rows_per_sample=1, ppo_epochs=2, minibatch_size=8, micro_batch_size=None,
                micro_batch_tokens=None, longest_row=100)  # fmt: skip
    return BatchPlan(**{**base, **settings})


def test_the_figures_follow_from_the_settings():
    plan = _plan(micro_batch_tokens=350).check()
    assert plan.rows == 32 and plan.minibatch_rows == 8 and plan.micro_batch_rows == 3
    table = plan.table()
    assert "rows per step" in table and "optimizer steps per step" in table
    values = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in table.splitlines()[1:]}
    assert values["optimizer steps per step"] == str(2 * 4)  # two epochs of four minibatches
    assert values["micro-batches per minibatch, at least"] == "3"  # 8 rows, at most 3 of 100 tokens in 350
    assert values["forward rows (module.algorithm.padding_free)"] == "padded"
    assert "packed" in _plan(padding_free=True).table()
    assert _plan(rows_per_sample=3, minibatch_size=None).rows == 96  # RAVR's three rows per sample


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(minibatch_size=12), r"minibatch_size=12 does not divide the 32 rows of a step \(data.batch_size=8 "),
        (dict(minibatch_size=64), r"minibatch_size=64 does not divide the 32 rows"),
        (dict(micro_batch_size=16), r"micro_batch_size=16 is larger than its minibatch \(8 rows"),
        (dict(micro_batch_tokens=99), r"micro_batch_tokens=99 is below the longest row \(100 tokens"),
    ],
)
def test_an_inconsistent_combination_is_one_line_naming_the_settings(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        _plan(**settings).check()
    assert "\n" not in str(error.value)


def test_every_rl_fit_prints_the_plan_and_refuses_a_bad_one_before_the_first_rollout(cpu_trainer, caplog):
    data = PromptDataModule(task="arithmetic", train_size=16, val_size=2, batch_size=2, vocab_size=64)
    policy = dict(arch="gpt_neox", vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    module = GRPOModule(policy, rollout=dict(n=2, max_new_tokens=4), algorithm=dict(micro_batch_size=2))
    with caplog.at_level(logging.INFO, logger="zoo"):
        cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[RolloutCallback()]).fit(module, datamodule=data)
    assert "RL batch plan:" in caplog.text and "rows per micro-batch, at most" in caplog.text
    module = GRPOModule(policy, rollout=dict(n=2, max_new_tokens=4), algorithm=dict(minibatch_size=3))
    trainer = cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[RolloutCallback()])
    with pytest.raises(ConfigError, match="minibatch_size=3 does not divide the 4 rows"):
        trainer.fit(module, datamodule=data)
    assert module.rollouts_consumed == 0
