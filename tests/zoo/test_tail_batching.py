"""Tail batching (zoo/callbacks/tail_batching.py): the scheduler's invariants on random sizes and seeds with a
simulated engine, the η = 1 equivalence with synchronous batching, and a GRPO run with the sampler."""

import random

import lightning as L
import pytest
import torch

from zoo.callbacks.rollout import RolloutCallback
from zoo.callbacks.tail_batching import PromptStream, TailBatcher, TailBatching
from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.grpo import GRPOModule


def _simulated_round(launch, difficulty, rng):
    """The engine's outcome: response lengths drawn around each prompt's difficulty; a prompt completes when
    its ``complete_at``-th response finishes; with a quota, the first ``quota`` prompts to complete (ties by
    launch order) are trained."""
    finish_time = {}
    for p in launch.prompts:
        lengths = sorted(rng.expovariate(1 / difficulty[p]) for _ in range(launch.n))
        finish_time[p] = lengths[launch.complete_at - 1]
    if launch.quota is None:
        return list(launch.prompts), finish_time
    order = sorted(range(len(launch.prompts)), key=lambda i: (finish_time[launch.prompts[i]], i))
    return [launch.prompts[i] for i in sorted(order[: launch.quota])], finish_time


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_every_step_trains_p0_prompts_and_every_prompt_is_trained_exactly_once(seed):
    rng = random.Random(seed)
    p0, r0 = rng.randint(2, 12), rng.randint(1, 8)
    size = p0 * rng.randint(6, 20) + rng.randint(0, p0 - 1)
    eta_p, eta_r = rng.choice([1.0, 1.125, 1.25, 1.5]), rng.choice([1.0, 1.125, 1.25, 1.5])
    difficulty = [rng.choice([1.0, 1.0, 1.0, 8.0]) for _ in range(size)]  # a persistent long tail
    batcher = TailBatcher(p0, r0, eta_p, eta_r)
    stream = PromptStream(size, seed=seed)
    trained, drawn = [], []

    def fresh(count, at_least):
        taken = stream.take(count, at_least)
        drawn.extend(taken)
        return taken

    for _ in range(3 * size // p0):
        queued_before = len(batcher.queue)
        launch = batcher.plan(fresh)
        assert launch.long == (queued_before >= p0)  # long rounds only once the queue can fill one
        if launch.long:
            assert (launch.n, launch.quota) == (r0, None)  # no over-provisioning in a long round
        completed, finish_time = _simulated_round(launch, difficulty, rng)
        if not launch.long:  # the trained prompts are the first P0 to complete
            slowest_trained = max(finish_time[p] for p in completed)
            assert all(finish_time[p] >= slowest_trained for p in launch.prompts if p not in completed)
        batcher.finish(launch, completed)
        assert len(completed) == p0  # exactly P0 prompts (× R0 responses each) per step
        trained.extend((stream.epoch, p) for p in completed)
    assert len(trained) > size  # more than an epoch's worth: prompts of the next epoch are drawn too
    # none dropped, none duplicated: everything drawn is trained once or still waits in the queue
    assert sorted(drawn) == sorted([p for _, p in trained] + batcher.queue)
    if eta_p > 1 and eta_r >= 1:
        assert batcher.short_rounds > 0


@pytest.mark.parametrize("p0, r0, size, seed", [(4, 3, 40, 0), (5, 2, 53, 7), (3, 8, 31, 11)])
def test_with_ratios_of_one_it_is_synchronous_batching(p0, r0, size, seed):
    batcher, stream = TailBatcher(p0, r0, 1.0, 1.0), PromptStream(size, seed=seed)
    order = []
    for epoch in range(3):  # the loader's order: a seeded permutation per epoch, its last partial batch dropped
        permutation = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        order.extend(permutation[: size // p0 * p0])
    for step in range(3 * (size // p0)):
        launch = batcher.plan(stream.take)
        assert launch.prompts == order[step * p0 : (step + 1) * p0] and (launch.n, launch.complete_at) == (r0, r0)
        batcher.finish(launch, launch.prompts)  # a quota of all launched prompts: every one completes
    assert batcher.queue == [] and batcher.long_rounds == 0


def test_ratios_below_one_are_refused():
    with pytest.raises(ConfigError, match="ratios must be >= 1"):
        TailBatcher(4, 4, 0.5, 1.0)


POLICY = dict(
    arch="gpt_neox",
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


class _Start(L.Callback):
    def on_train_start(self, trainer, module):
        self.weights = [p.detach().clone() for p in module.model.parameters()]


def _fit(cpu_trainer, sampler, steps=6):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=64, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("1"))  # a reward the random policy sometimes earns
    module = GRPOModule(POLICY, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=4, max_new_tokens=5))
    callbacks = [RolloutCallback(), _Start()] + ([sampler] if sampler is not None else [])
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    module.start_weights = callbacks[1].weights
    return module, trainer


def test_grpo_with_ratios_of_one_equals_grpo_without_a_sampler(cpu_trainer):
    plain, _ = _fit(cpu_trainer, None)
    sampled, _ = _fit(cpu_trainer, TailBatching(1.0, 1.0))
    for (name, a), (_, b) in zip(plain.model.named_parameters(), sampled.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    moved = [not torch.equal(a, b) for a, b in zip(plain.model.parameters(), plain.start_weights, strict=True)]
    assert any(moved)  # training changed the policy, so equal weights mean equal steps


def test_grpo_with_tail_batching_runs_short_and_long_rounds(cpu_trainer):
    sampler = TailBatching(1.5, 1.5)
    _, trainer = _fit(cpu_trainer, sampler, steps=8)
    metrics = trainer.callback_metrics
    assert metrics["sampler/short_rounds"] + metrics["sampler/long_rounds"] == 8
    assert sampler.batcher.long_rounds >= 1  # η_P = 1.5 queues 2 prompts per short round: a long round by step 3
    state = sampler.state_dict()
    restored = TailBatching(1.5, 1.5)
    restored.load_state_dict(state)
    assert restored._restored == state
