"""GRPO end to end in a Lightning Trainer: on a bandit-like task the mean reward rises; failures are counted."""

import lightning as L
import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(
    arch="gpt_neox",
    vocab_size=64,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
)


class _Rewards(L.Callback):
    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, *args):
        self.history.append(trainer.callback_metrics["reward/mean"].item())


def _fit(reward, steps, cpu_trainer, module_class=GRPOModule, policy=POLICY, tokenizer=None, lr=1e-3, rollout=None,
         **module):  # fmt: skip
    torch.manual_seed(0)
    data = PromptDataModule(
        task="arithmetic", train_size=2000, val_size=16, batch_size=16, vocab_size=64, tokenizer=tokenizer
    )
    data.prepare_data()
    data.reward = reward
    grpo = module_class(
        policy,
        optim=dict(lr=lr, warmup_steps=5, weight_decay=0.0),
        rollout=rollout or dict(n=8, max_new_tokens=4),
        **module,
    )
    record = _Rewards()
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback(), record])
    trainer.fit(grpo, datamodule=data)
    return record.history, trainer


def test_reward_rises_on_a_bandit_task(cpu_trainer):
    # reward 1 when the answer starts with "7": about 1 in 16 samples at the start
    history, _ = _fit(lambda p, c, r: float(c.strip().startswith("7")), 120, cpu_trainer)
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert first < 0.1 and last > 0.6  # 0.04 → 0.8 when written


def test_reward_rises_with_a_hugging_face_policy(cpu_trainer, hf_models):
    """The same bandit with a transformers Llama as the policy, its own tokenizer, and the hf engine that
    rollout=auto picks for it."""
    path = str(hf_models["llama"])
    history, trainer = _fit(
        lambda p, c, r: float(c.strip().startswith("7")), 60, cpu_trainer, policy={"arch": "hf", "path": path},
        tokenizer=path, lr=1e-2,
    )  # fmt: skip
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert first < 0.1 and last > 0.6  # 0.01 → 0.99 when written
    assert trainer.callbacks[0].engine_name == "hf"


def test_a_reward_that_throws_scores_zero_and_training_goes_on(cpu_trainer):
    def flaky(prompt, completion, reference):
        if "1" in completion:
            raise ValueError("cannot score this")
        return 1.0

    history, trainer = _fit(flaky, 3, cpu_trainer)
    assert len(history) == 3 and trainer.callback_metrics["reward/failures"] > 0


@pytest.mark.parametrize(
    "algorithm",
    [
        dict(advantage="rloo", ppo_epochs=2, minibatch_size=32, kl_coef=0.1),
        dict(advantage="reinforce_pp", entropy_coef=0.01, clip_high=0.28),
        *(
            dict(pg_variant=variant, pg_options=options, ppo_epochs=2, minibatch_size=64)
            for variant, options in [
                ("ppo", {"dual_clip": 3.0}),
                ("decoupled_ppo", {"level": "geometric", "filter": [0.5, 2.0]}),
                ("tis", {}),
                ("cispo", {"unified_mask": True}),
                ("topr", {}),
                ("kimi15", {}),
            ]
        ),
    ],
    ids=lambda algorithm: algorithm.get("pg_variant") or algorithm["advantage"],
)
def test_other_estimators_and_loss_terms_train(cpu_trainer, algorithm):
    history, trainer = _fit(lambda p, c, r: float(c.strip().startswith("7")), 4, cpu_trainer, algorithm=algorithm)
    metrics = trainer.callback_metrics
    updates_per_rollout = algorithm.get("ppo_epochs", 1) * (128 // algorithm.get("minibatch_size", 128))
    assert trainer.global_step == len(history) * updates_per_rollout  # one optimizer step per minibatch
    assert torch.isfinite(metrics["train/loss"])
    assert ("policy/kl_to_reference" in metrics) == ("kl_coef" in algorithm)
    assert ("policy/entropy" in metrics) == ("entropy_coef" in algorithm)
    assert ("policy/train_infer_weight" in metrics) == (algorithm.get("pg_variant") == "decoupled_ppo")


def test_an_unknown_variant_option_is_named():
    with pytest.raises(ConfigError, match="pg_options .*pg_variant=cispo.*: clip"):
        GRPOModule(POLICY, algorithm=dict(pg_variant="cispo", pg_options={"clip": 0.1}))


def test_ppo_with_a_critic_raises_the_reward_too(cpu_trainer):
    from zoo.modules.ppo import PPOModule

    history, trainer = _fit(
        lambda p, c, r: float(c.strip().startswith("7")),
        80,  # 0.04 -> 0.87 over the last 10 steps (0.96 at 120)
        cpu_trainer,
        module_class=PPOModule,
        algorithm=dict(kl_coef=0.01),
    )
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert first < 0.1 and last > 0.5
    assert torch.isfinite(trainer.callback_metrics["critic/value_loss"])


class _NaNAdvantages(GRPOModule):
    """GRPO whose advantage stage goes non-finite on steps 1 and 2 (a custom estimator gone wrong)."""

    def advantages(self, batch):
        advantages = super().advantages(batch)
        self.calls = getattr(self, "calls", 0) + 1
        return advantages * float("nan") if self.calls in (2, 3) else advantages


def test_steps_with_non_finite_advantages_are_skipped_and_counted(cpu_trainer):
    weights = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            weights.append([p.detach().clone() for p in module.model.parameters()])

    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("7"))
    module = _NaNAdvantages(POLICY, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=4, max_new_tokens=4))
    trainer = cpu_trainer(max_steps=3, limit_val_batches=0, callbacks=[RolloutCallback(), Snapshot()])
    trainer.fit(module, datamodule=data)
    assert module.skipped_steps == 2 and trainer.global_step == 3  # 5 batches: 3 trained, 2 skipped
    assert trainer.callback_metrics["train/skipped_steps"] == 2
    for before, after in ((weights[0], weights[1]), (weights[1], weights[2])):  # skipped: the weights did not move
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(bool(torch.isfinite(p).all()) for p in module.model.parameters())


def test_too_many_skipped_steps_stop_the_run(cpu_trainer):
    from zoo.errors import TrainingDiverged

    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    module = _NaNAdvantages(POLICY, rollout=dict(n=4, max_new_tokens=4), algorithm=dict(max_skipped_steps=1))
    trainer = cpu_trainer(max_steps=5, limit_val_batches=0, callbacks=[RolloutCallback()])
    with pytest.raises(TrainingDiverged, match="2 steps had non-finite advantages"):
        trainer.fit(module, datamodule=data)


def _hand_built_batch(module, seed=0):
    """Two prompt+completion rows with advantages, the rollout's and the reference's log-probs."""
    from zoo.rl.rollout import RolloutBatch, token_logprobs

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 64, (2, 9), generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.float)
    with torch.no_grad():
        old = token_logprobs(module.model, input_ids)[0]
        ref = token_logprobs(module.reference, input_ids)[0] if module.reference is not None else None
    batch = RolloutBatch(input_ids, mask, old.clone(), torch.tensor([0, 0]))
    batch.advantages = torch.tensor([[1.0], [-1.0]]) * mask
    batch.ref_logprobs = ref
    return batch


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_the_loss_is_the_policy_loss_plus_the_kl_penalty_minus_the_entropy_bonus(aggregation):
    from zoo.rl.losses import aggregate, kl_penalty, token_entropy
    from zoo.rl.pg_variants import ppo_clip_loss
    from zoo.rl.rollout import token_logprobs

    torch.manual_seed(0)
    algorithm = dict(kl_coef=0.3, entropy_coef=0.05, aggregation=aggregation, tis_cap=None)
    module = GRPOModule(POLICY, rollout=dict(n=2, max_new_tokens=5), algorithm=algorithm)
    module.configure_model()
    with torch.no_grad():  # a reference that differs from the policy, so the KL is not 0
        for p in module.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _hand_built_batch(module)
    loss, logs = module.loss(batch)

    logprobs = token_logprobs(module.model, batch.input_ids)[0]
    policy, _ = ppo_clip_loss(
        logprobs,
        batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach(),
        batch.advantages,
        batch.response_mask,
        aggregation=aggregation,
        max_length=5,
    )
    kl = aggregate(kl_penalty(logprobs, batch.ref_logprobs, "k3"), batch.response_mask, aggregation, 5)
    entropy = aggregate(token_entropy(module.model(batch.input_ids[:, :-1])), batch.response_mask, aggregation, 5)
    assert kl > 0 and entropy > 0
    torch.testing.assert_close(loss, policy + 0.3 * kl - 0.05 * entropy)
    torch.testing.assert_close(logs["policy/kl_to_reference"], kl.detach())


def test_ppo_places_the_task_reward_on_the_last_completion_token():
    from zoo.modules.ppo import PPOModule
    from zoo.rl.advantages import masked_whiten

    torch.manual_seed(0)
    module = PPOModule(POLICY, rollout=dict(n=2, max_new_tokens=5), ppo=dict(gamma=1.0, lam=1.0))
    module.configure_model()
    batch = _hand_built_batch(module)
    batch.advantages = None
    batch.rewards = torch.tensor([2.0, -1.0])
    module.prepare(batch)
    advantages = module.advantages(batch)
    # with gamma = lambda = 1, GAE's return at every completion token is the reward at the last one: the
    # returns equal the reward on each completion token, and zero elsewhere
    expected = batch.rewards[:, None] * batch.response_mask
    torch.testing.assert_close(batch.returns, expected)
    whitened = masked_whiten((expected - batch.old_values) * batch.response_mask, batch.response_mask)
    torch.testing.assert_close(advantages, whitened)


def test_minibatch_order_follows_the_step_seed(cpu_trainer, monkeypatch):
    """Minibatches are drawn from the step's seed, which holds module.rollout.seed (zoo fit: the run's seed): runs
    of different seeds shuffle their minibatches differently, and a resumed run as the original did."""
    from zoo.rl.rollout import RolloutBatch

    drawn = []
    minibatches = RolloutBatch.minibatches

    def record(self, size, generator=None):
        drawn.append(generator.initial_seed() if generator is not None else None)
        return minibatches(self, size, generator)

    monkeypatch.setattr(RolloutBatch, "minibatches", record)
    for seed in (3, 4):  # 4 minibatches a rollout: the rollouts of optimizer steps 0 and 4
        _fit(lambda p, c, r: 0.0, 8, cpu_trainer, rollout=dict(n=8, max_new_tokens=4, seed=seed),
             algorithm=dict(minibatch_size=32))  # fmt: skip
    assert drawn == [s * 2**32 + step * 1_000_003 for s in (3, 4) for step in (0, 4)]


class _Shaped(GRPOModule):
    """GRPO that keeps the last step's rewards before and after length shaping, and the completions' lengths."""

    def shape_for_length(self, rewards, batch):
        shaped = super().shape_for_length(rewards, batch)
        self.seen = rewards.clone(), shaped.clone(), batch.response_mask.sum(1)
        return shaped


def test_overlong_shaping_adds_dapos_penalty_to_each_completions_reward(cpu_trainer):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=16, val_size=2, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: 1.0
    algorithm = dict(overlong_buffer=4, overlong_penalty=0.5)
    module = _Shaped(POLICY, rollout=dict(n=4, max_new_tokens=8), algorithm=algorithm)
    trainer = cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[RolloutCallback()])
    trainer.fit(module, datamodule=data)
    raw, shaped, lengths = module.seen
    assert raw.eq(1).all() and (lengths > 4).any()  # some completions reach into the buffer
    expected = 1 - 0.5 * ((lengths - 4).clamp(min=0) / 4).clamp(max=1)
    torch.testing.assert_close(shaped, expected)
    assert trainer.callback_metrics["reward/overlong_penalty"].item() == pytest.approx((expected - 1).mean().item())


def test_an_overlong_setting_out_of_range_is_named():
    with pytest.raises(ConfigError, match="overlong_buffer=20 is longer than module.rollout.max_new_tokens=16"):
        GRPOModule(POLICY, rollout=dict(max_new_tokens=16), algorithm=dict(overlong_buffer=20))
    with pytest.raises(ConfigError, match="module.algorithm.overlong_buffer"):
        GRPOModule(POLICY, algorithm=dict(overlong_buffer=0))
    with pytest.raises(ConfigError, match="module.algorithm.overlong_penalty must be >= 0, got -1.0"):
        GRPOModule(POLICY, algorithm=dict(overlong_buffer=4, overlong_penalty=-1.0))
