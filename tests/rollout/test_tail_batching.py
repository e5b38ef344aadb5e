"""Tail batching (zoo/rollout/samplers/tail_batching.py): the sampler's invariants on random sizes and seeds with the
native engine deciding which prompts complete, the η = 1 equivalence with synchronous batching, and GRPO runs with the
sampler (no prompt lost, exact restore)."""

import math
import random
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.modules.grpo import GRPOModule
from zoo.rl.rollout import Round
from zoo.rollout.callback import RolloutCallback
from zoo.rollout.samplers.tail_batching import TailBatcher, TailBatching
from zoo.text.loader import PromptStream


class _Tokens:
    def decode(self, ids, skip_special_tokens=True):
        return ""


class _EngineModule:
    """What :meth:`TailBatching.next_round` needs of a module: the rollout stage, here the native engine on the
    ``scripted_lengths`` stand-in policy (tests/conftest.py) with zoo's own :meth:`Round.from_generation`; every
    result is recorded."""

    rollout_callback = SimpleNamespace(schedule="batch")

    def __init__(self, seed: int, policy: torch.nn.Module) -> None:
        self.engine, self.seed, self.rounds = NativeEngine(policy), seed, []

    def params(self, round_index: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=64, temperature=1.0, stop_token_ids=(0,), seed=self.seed + round_index)

    def rollout(self, problems, n, quota, complete_at):
        prompts = [p["prompt_ids"] for p in problems]
        result = self.engine.generate(prompts, n, self.params(len(self.rounds)), quota, complete_at)
        self.rounds.append((problems, n, quota, complete_at, result))
        return Round.from_generation(problems, result, _Tokens(), "cpu")

    def log_dict(self, metrics):
        pass


def _sampler(problems, p0, r0, eta_p, eta_r, seed) -> TailBatching:
    sampler = TailBatching(eta_p, eta_r)
    sampler.problems = problems
    sampler.batcher = TailBatcher(p0, r0, eta_p, eta_r)
    sampler.stream = PromptStream(len(problems), seed)
    return sampler


def _record_draws(stream: PromptStream) -> list[int]:
    drawn, take = [], stream.take

    def recording(count, at_least):
        taken = take(count, at_least)
        drawn.extend(taken)
        return taken

    stream.take = recording
    return drawn


def test_the_samplers_are_of_the_sampler_type_and_other_callbacks_are_not():
    """The RL module finds its sampler among the trainer's callbacks by this type."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.rollout.callback import QueueSampler
    from zoo.rollout.samplers.agent import AgentSampler
    from zoo.rollout.samplers.asynchronous import AsyncSampler
    from zoo.rollout.samplers.base import Sampler

    assert isinstance(TailBatching(1.0, 1.0), Sampler) and not isinstance(ModelCheckpoint(), Sampler)
    assert all(issubclass(c, Sampler) for c in (QueueSampler, AsyncSampler, AgentSampler))


@pytest.mark.parametrize("seed", range(8))
def test_rounds_on_the_native_engine_keep_every_invariant(seed, scripted_lengths):
    rng = random.Random(seed)
    p0, r0 = rng.randint(2, 6), rng.randint(1, 4)
    size = p0 * rng.randint(2, 5) + rng.randint(0, p0 - 1)  # small: rounds cross epoch boundaries often
    eta_p, eta_r = rng.choice([1.0, 1.25, 1.5, 2.0, 3.0]), rng.choice([1.0, 1.25, 1.5, 2.0])
    problems = [{"index": i, "prompt_ids": [5, rng.choice([1, 2, 3, 12])]} for i in range(size)]  # a long tail
    sampler, module = _sampler(problems, p0, r0, eta_p, eta_r, seed), _EngineModule(seed, scripted_lengths())
    drawn = _record_draws(sampler.stream)
    trained = []
    for _ in range(4 * size // p0):
        queued_before = len(sampler.batcher.queue)
        step = sampler.next_round(module)
        launched, n, quota, complete_at, result = module.rounds[-1]
        long = queued_before >= p0
        assert (quota is None) == long  # long rounds only once the queue can fill one, and then always
        if long:
            assert (n, len(launched)) == (r0, p0)  # no over-provisioning in a long round
        else:
            assert (n, len(launched)) == (math.ceil(eta_r * r0), math.ceil(eta_p * p0))
            assert complete_at == r0
            # the trained prompts are the first P0 to complete: the same round run to its end (the same draws)
            # completes them no later than any prompt left out
            full = module.engine.generate(
                [p["prompt_ids"] for p in launched], n, module.params(len(module.rounds) - 1), None, r0
            )
            done_at = {}
            for sample in full.samples:
                done_at[sample.prompt_index] = max(done_at.get(sample.prompt_index, 0), len(sample.token_ids))
            left_out = set(range(len(launched))) - set(step.kept)
            assert max(done_at[i] for i in step.kept) <= min((done_at[i] for i in left_out), default=math.inf)
        assert len(step.problems) == p0 and len(step.batch) == p0 * r0  # exactly P0 prompts × R0 responses
        trained.extend(p["index"] for p in step.problems)
    assert len(drawn) > size  # the next epochs' prompts were drawn too
    # none lost, none duplicated: every drawn occurrence is trained once or still waits in the queue
    assert sorted(drawn) == sorted(trained + sampler.batcher.queue)


def test_a_launch_holding_one_prompt_twice_queues_the_occurrence_that_did_not_complete():
    batcher, stream = TailBatcher(4, 2, 1.5, 1.0), PromptStream(10, seed=0)
    first = batcher.plan(stream.take)
    batcher.finish(first, range(4))
    second = batcher.plan(stream.take)  # the epoch's last 4 prompts, topped up with 2 of the next epoch
    (twice,) = [p for p in set(second.prompts) if second.prompts.count(p) == 2]
    completed = [second.prompts.index(twice)] + [i for i, p in enumerate(second.prompts) if p != twice][:3]
    queued_before = list(batcher.queue)
    batcher.finish(second, completed)
    left = [second.prompts[i] for i in range(len(second.prompts)) if i not in completed]
    assert twice in left and batcher.queue == queued_before + left  # its second occurrence waits in the queue


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
        batcher.finish(launch, range(p0))  # a quota of all launched prompts: every one completes
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


def _fit(cpu_trainer, sampler, steps=6, train_size=64, extra=(), policy=POLICY):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=train_size, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("1"))  # a reward the random policy sometimes earns
    module = GRPOModule(policy, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=4, max_new_tokens=5))
    callbacks = [RolloutCallback(), _Start(), *extra] + ([sampler] if sampler is not None else [])
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


def test_on_the_llama_family_ratios_of_one_equal_no_sampler_and_tail_rounds_run(cpu_trainer, llama_family_policy):
    plain, _ = _fit(cpu_trainer, None, steps=4, policy=llama_family_policy)
    sampled, _ = _fit(cpu_trainer, TailBatching(1.0, 1.0), steps=4, policy=llama_family_policy)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), sampled.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), plain.start_weights, strict=True))
    sampler = TailBatching(1.5, 1.5)
    _, trainer = _fit(cpu_trainer, sampler, steps=4, policy=llama_family_policy)
    assert sampler.batcher.long_rounds >= 1 and trainer.callback_metrics["sampler/short_rounds"] >= 1


class _CountPrompts(L.Callback):
    """Records every prompt the sampler draws and every prompt a step trains (by the problem's prompt text)."""

    def __init__(self, sampler: TailBatching) -> None:
        self.sampler, self.trained = sampler, []

    def on_train_start(self, trainer, module):
        self.drawn = _record_draws(self.sampler.stream)
        rollout = module.rollout

        def recording(*args, **kwargs):
            step = rollout(*args, **kwargs)
            self.trained.extend(p["prompt"] for p in step.problems)
            return step

        module.rollout = recording


def test_grpo_with_tail_batching_loses_no_prompt_across_epochs(cpu_trainer):
    sampler = TailBatching(1.5, 1.0)  # 10 prompts, P0 = 4: every other round tops an epoch's tail up
    counter = _CountPrompts(sampler)
    _, trainer = _fit(cpu_trainer, sampler, steps=12, train_size=10, extra=[counter])
    problems = trainer.datamodule.train_set
    drawn = sorted(problems[i]["prompt"] for i in counter.drawn)
    queued = [problems[i]["prompt"] for i in sampler.batcher.queue]
    assert len(counter.trained) == 48 and sampler.stream.epoch >= 4  # 48 prompts of 10: epochs crossed
    assert drawn == sorted(counter.trained + queued)


def test_grpo_with_tail_batching_runs_short_and_long_rounds_and_restores_exactly(cpu_trainer):
    sampler = TailBatching(1.5, 1.5)
    module, trainer = _fit(cpu_trainer, sampler, steps=8)
    metrics = trainer.callback_metrics
    assert metrics["sampler/short_rounds"] + metrics["sampler/long_rounds"] == 8
    assert sampler.batcher.long_rounds >= 1  # η_P = 1.5 queues 2 prompts per short round: a long round by step 3
    restored = TailBatching(1.5, 1.5)
    restored.load_state_dict(sampler.state_dict())  # before setup, as Lightning restores a checkpoint
    restored.setup(trainer, module, "fit")
    assert restored.batcher.state_dict() == sampler.batcher.state_dict()
    for _ in range(5):  # the restored sampler plans the rounds the original would have
        launch = sampler.batcher.plan(sampler.stream.take)
        assert restored.batcher.plan(restored.stream.take) == launch
        sampler.batcher.finish(launch, range(1, 5))
        restored.batcher.finish(launch, range(1, 5))


# -- properties (hypothesis): any sizes, ratios up to 3, any engine outcome --------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 40),
    at_least=st.integers(1, 8),
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=25),
    seed=st.integers(0, 2**16),
)
def test_the_prompt_stream_follows_the_epoch_orders_and_skips_only_short_tails(size, at_least, counts, seed):
    stream = PromptStream(size, seed)
    if size < at_least:
        with pytest.raises(ConfigError, match="cannot fill a round"):
            stream.take(counts[0], at_least)
        return
    draws = [stream.take(count, at_least) for count in counts]
    assert [len(d) for d in draws] == counts
    epoch, position = 0, 0
    order = PromptStream(size, seed)  # a second stream of the same seed reads the epoch orders
    for draw in draws:
        for i, prompt in enumerate(draw):
            expected = order._epoch_order()
            left = len(expected) - position
            if left == 0 or (i == 0 and left < at_least):  # a spent epoch, or a tail too short to start a draw
                epoch, position = epoch + 1, 0
                order.epoch, order._current = epoch, None
                expected = order._epoch_order()
            assert prompt == expected[position]
            position += 1
    assert (stream.epoch, stream.position) == (epoch, position)


@settings(max_examples=150, deadline=None)
@given(
    p0=st.integers(1, 6),
    r0=st.integers(1, 4),
    extra=st.integers(0, 30),
    eta_p=st.floats(1.0, 3.0),
    eta_r=st.floats(1.0, 3.0),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_any_engine_outcome_keeps_the_schedulers_invariants(p0, r0, extra, eta_p, eta_r, seed, data):
    size = p0 + extra
    batcher, stream = TailBatcher(p0, r0, eta_p, eta_r), PromptStream(size, seed)
    drawn = _record_draws(stream)
    trained = []
    for _ in range(data.draw(st.integers(1, 20), label="rounds")):
        queued = list(batcher.queue)
        launch = batcher.plan(stream.take)
        if len(queued) >= p0:
            assert launch.long and launch.prompts == queued[:p0] and (launch.n, launch.quota) == (r0, None)
            completed = list(range(p0))  # a long round runs every prompt to its end
        else:
            assert not launch.long and launch.quota == p0 and launch.complete_at == r0
            assert len(launch.prompts) == math.ceil(eta_p * p0 - 1e-9) and launch.n == math.ceil(eta_r * r0 - 1e-9)
            # the engine may complete any P0 of the launched prompts first
            completed = data.draw(st.permutations(range(len(launch.prompts))), label="finish order")[:p0]
        batcher.finish(launch, completed)
        trained.extend(launch.prompts[i] for i in completed)
        assert sorted(drawn) == sorted(trained + batcher.queue)  # every occurrence trained once or queued
        restored = TailBatcher(p0, r0, eta_p, eta_r)
        restored.load_state_dict(batcher.state_dict())
        assert restored == batcher
