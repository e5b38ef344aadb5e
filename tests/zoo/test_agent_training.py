"""Multi-turn agents in RL training (zoo/rollout/samplers/agent.py): GRPO on trajectories with simulated
environments raises the environment's reward; observations never reach the loss; settings are checked."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.grpo import GRPOModule
from zoo.modules.ppo import PPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=128)  # fmt: skip


class _Record(L.Callback):
    def __init__(self):
        self.rewards, self.batches = [], []

    def on_train_batch_end(self, trainer, *args):
        self.rewards.append(trainer.callback_metrics["reward/mean"].item())


def _fit(cpu_trainer, steps, module_class=GRPOModule, target="7", **agent):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=2000, val_size=8, batch_size=8, vocab_size=64)
    data.prepare_data()
    optim, rollout = dict(lr=1e-3, warmup_steps=5, weight_decay=0.0), dict(n=4, max_new_tokens=4)
    module = module_class({**POLICY, "vocab_size": len(data.tokenizer)}, optim=optim, rollout=rollout)
    environment = dict(latency_mean=0.0, latency_std=0.0, turns=2, observation=" ok", target=target)
    callback = RolloutCallback(agent=dict(environment="simulated", environment_options=environment, **agent))
    record = _Record()
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[callback, record])
    trainer.fit(module, datamodule=data)
    return record, trainer, module, callback


def test_grpo_on_multi_turn_trajectories_raises_the_environments_reward(cpu_trainer):
    """The environment pays the share of the policy's turns that say "7"."""
    record, trainer, _, _ = _fit(cpu_trainer, 100, max_turns=2)
    first, last = sum(record.rewards[:10]) / 10, sum(record.rewards[-10:]) / 10
    assert first < 0.3 and last > first + 0.3, (first, last)
    metrics = trainer.callback_metrics
    assert metrics["agent/turns_mean"] == 2 and metrics["agent/env_failures"] == 0


def test_observation_tokens_get_no_gradient(cpu_trainer, monkeypatch):
    """The trained batch's response mask covers the policy's turns only: the observation's tokens sit at
    masked positions, so the loss does not depend on them."""
    batches = []
    update = GRPOModule.update
    monkeypatch.setattr(GRPOModule, "update", lambda self, batch: batches.append(batch) or update(self, batch))
    _, _, module, _ = _fit(cpu_trainer, 1, max_turns=2, redundancy=1, extra_groups=1)
    (batch,) = batches
    observation = module.tokenizer(" ok", add_special_tokens=False)["input_ids"]
    targets, mask = batch.targets, batch.response_mask.bool()
    for row in range(len(batch)):
        assert "ok" not in module.tokenizer.decode(targets[row][mask[row]].tolist())  # no observation trained
        masked = targets[row][~mask[row]].tolist()
        found = [masked[i : i + len(observation)] == observation for i in range(len(masked) - len(observation) + 1)]
        assert sum(found) == 2, f"row {row}: the two observations are not among the masked tokens"
    assert len(batch) == 8 * 4 and batch.rewards.shape == (32,)


def test_ppo_advantages_run_over_every_turn_of_a_trajectory(cpu_trainer, monkeypatch):
    """PPO on multi-turn rows: GAE treats a trajectory's action tokens as one sequence, so the value targets of the
    first turn's tokens see the reward paid at the end (not a trajectory cut at the first observation)."""
    batches = []
    update = PPOModule.update
    monkeypatch.setattr(PPOModule, "update", lambda self, batch: batches.append(batch) or update(self, batch))
    # every turn "contains" the empty target: each trajectory is paid 1 at its end
    _, _, module, _ = _fit(cpu_trainer, 1, PPOModule, target="", max_turns=2, redundancy=1, extra_groups=1)
    (batch,) = batches
    gamma, lam = module.ppo.gamma, module.ppo.lam
    mask, values = batch.response_mask.bool(), batch.old_values
    assert (batch.rewards == 1).all()
    for row in range(len(batch)):
        actions = mask[row].nonzero().squeeze(1).tolist()
        assert (mask[row, actions[0] : actions[-1]] == 0).any(), f"row {row} has no observation between its turns"
        running, next_value = 0.0, 0.0
        for i, t in enumerate(reversed(actions)):
            reward = batch.rewards[row].item() if i == 0 else 0.0
            running = reward + gamma * next_value - values[row, t].item() + gamma * lam * running
            next_value = values[row, t].item()
            assert batch.returns[row, t].item() == pytest.approx(running + next_value, abs=1e-5), (row, t)


@pytest.mark.parametrize(
    "agent, named",
    [
        (dict(environment="nowhere.Env"), "rollout.agent.environment 'nowhere.Env'"),
        (dict(max_turns=0), "rollout.agent.max_turns"),
        (dict(turns=3), "unknown rollout.agent setting"),
        (dict(environment_options={"turn": 3}), "environment_options do not fit SimulatedEnvironment"),
        (dict(env_timeout_s=0), "rollout.agent.env_timeout_s"),
    ],
)
def test_bad_agent_settings_are_named(agent, named):
    with pytest.raises(ConfigError, match=named):
        RolloutCallback(agent=agent)


def test_agents_do_not_combine_with_asynchronous_rollout():
    with pytest.raises(ConfigError, match="rollout.agent runs its own"):
        RolloutCallback(agent={}, async_ratio=1)


@pytest.mark.parametrize(
    "settings, named", [(dict(agent={}), "rollout.agent"), (dict(async_ratio=1), "rollout.async_ratio")]
)
def test_a_hugging_face_policy_is_refused_before_anything_loads(settings, named):
    callback = RolloutCallback(**settings)
    callback.check(SimpleNamespace(arch="gpt_neox"))  # zoo's own: the native engine
    with pytest.raises(ConfigError, match=f"{named} needs the native engine.*not yet a Hugging Face"):
        RolloutCallback(**settings).check(SimpleNamespace(arch="hf"))
