"""Queue scheduling (zoo/rollout/samplers/queue.py): without redundant prompts it trains exactly what the batch schedule
trains; redundant prompts and dynamic filtering keep every prompt (trained, filtered out or returned, never twice), a
returned prompt is trained the next time it is launched, rewards run while generation goes on, and GRPO runs with it
through the rollout callback."""

import random
import threading
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.modules.grpo import GRPOModule
from zoo.rl.rewards import RewardRunner
from zoo.rollout.callback import RolloutCallback
from zoo.rollout.samplers.queue import QueuePlanner, run_queue_round
from zoo.text.loader import PromptStream


class _Lengths:
    """Decodes a completion to one character per token: rewards below read its length."""

    def decode(self, ids, skip_special_tokens=True):
        return "x" * len(ids)


def _problems(rng, size):
    # the last prompt token sets the expected length (scripted_lengths): mostly short, a long tail
    return [
        {"prompt_ids": [5, rng.choice([1, 2, 2, 3, 3, 12])], "prompt": str(i), "reference": ""} for i in range(size)
    ]


def _params(seed, budget=40):
    return SamplingParams(max_new_tokens=budget, temperature=1.0, stop_token_ids=(0,), seed=seed)


def _odd_length(prompt, completion, reference):
    return float(len(completion) % 2)


def _round(engine, problems, launch, n, needed, seed, runner, protected=None, **options):
    """One queue-scheduled step: every response needed, sampled with seed ``seed``."""
    protected = protected or [False] * len(launch)
    return run_queue_round(
        engine, problems, launch, protected, n, n, needed, _params(seed), runner.submit_answers, _Lengths(), **options
    )


def test_without_redundant_prompts_it_trains_what_the_batch_schedule_trains(scripted_lengths):
    rng = random.Random(0)
    problems, engine = _problems(rng, 6), NativeEngine(scripted_lengths())
    runner = RewardRunner(_odd_length)
    for max_running in (None, 5):  # every request at once, or a pool refilled as rows finish
        outcome = _round(engine, problems, range(6), 4, 6, 3, runner, max_running=max_running)
        batch = engine.generate([p["prompt_ids"] for p in problems], 4, _params(3))
        assert outcome.trained == list(range(6)) and outcome.returned == [] == outcome.filtered
        assert [(s.prompt_index, s.token_ids, s.logprobs) for s in outcome.samples] == [
            (s.prompt_index, s.token_ids, s.logprobs) for s in batch.samples
        ]
        expected = [len(s.token_ids) % 2 for s in batch.samples]
        assert outcome.rewards.scores.tolist() == expected
    runner.close()


@pytest.mark.parametrize("seed", range(6))
def test_redundant_prompts_and_filtering_lose_no_prompt_and_starve_none(seed, scripted_lengths):
    rng = random.Random(seed)
    p0, n, extra = rng.randint(2, 5), rng.randint(2, 4), rng.randint(1, 4)
    filtering, max_running = rng.random() < 0.5, rng.choice([None, 3, 7])
    size = p0 * rng.randint(2, 4) + rng.randint(0, p0)
    problems, engine = _problems(rng, size), NativeEngine(scripted_lengths())
    planner, stream = QueuePlanner(p0, extra), PromptStream(size, seed)
    drawn, take = [], stream.take
    stream.take = lambda count, at_least: drawn.extend(taken := take(count, at_least)) or taken
    runner, consumed = RewardRunner(_odd_length), []
    for step in range(10):
        launch, protected = planner.plan(stream.take)
        returned_before = [p for p, guard in zip(launch, protected, strict=True) if guard]
        outcome = _round(
            engine, problems, launch, n, p0, 100 * seed + step, runner, protected, more=lambda: stream.take(1, 1)[0],
            filter_groups=filtering, max_launched=len(launch) + 3, max_running=max_running,
        )  # fmt: skip
        planner.finish(outcome)
        trained = [outcome.launched[k] for k in outcome.trained]
        filtered = [outcome.launched[k] for k in outcome.filtered]
        assert len(trained) == p0 and len(outcome.samples) == p0 * n
        assert all(p in trained + filtered for p in returned_before)  # a returned prompt is never returned twice
        if not filtering:
            assert filtered == [] and outcome.stats.filled_with_filtered == 0
        for k in outcome.trained:  # a trained group is complete, and its rewards are its texts' rewards
            rows = [i for i, s in enumerate(outcome.samples) if s.prompt_index == k]
            assert len(rows) == n
            assert [outcome.rewards.scores[i].item() for i in rows] == [
                len(outcome.samples[i].token_ids) % 2 for i in rows
            ]
            if filtering and k not in outcome.filtered and outcome.stats.filled_with_filtered == 0:
                assert len({outcome.rewards.scores[i].item() for i in rows}) > 1 or n == 1
        consumed += trained + filtered
        assert sorted(drawn) == sorted(consumed + planner.returned)  # each drawn prompt once: consumed or returned
    runner.close()


def test_redundant_prompts_stop_at_the_first_complete_groups(scripted_lengths):
    rng = random.Random(4)
    problems, engine = _problems(rng, 12), NativeEngine(scripted_lengths())
    runner = RewardRunner(_odd_length)
    outcome = _round(engine, problems, range(12), 3, 8, 1, runner)
    full = engine.generate([p["prompt_ids"] for p in problems], 3, _params(1))
    finish = {}  # when each group completes when everything runs to its end: its longest response
    for s in full.samples:
        finish[s.prompt_index] = max(finish.get(s.prompt_index, 0), len(s.token_ids))
    assert len(outcome.trained) == 8 and len(outcome.returned) == 4
    assert max(finish[k] for k in outcome.trained) <= min(finish[k] for k in outcome.returned)
    assert outcome.stats.decode_steps < full.decode_steps and outcome.stats.aborted_requests > 0
    runner.close()


def test_rewards_start_while_generation_goes_on(scripted_lengths):
    """A group is handed to the reward workers at the engine step it completes, not after the last one; the
    rewards run on the workers' threads."""
    rng = random.Random(2)
    problems, engine = _problems(rng, 8), NativeEngine(scripted_lengths())
    problems[5]["prompt_ids"] = [5, 30]  # a long group: generation goes on well after the short ones complete
    core_steps, submitted_at, threads = {"n": 0}, [], set()
    original = type(engine).core

    def counting_core(self, *args):
        core = original(self, *args)
        step = core.step

        def counted():
            core_steps["n"] += 1
            return step()

        core.step = counted
        return core

    engine.core = counting_core.__get__(engine)

    def reward(prompt, completion, reference):
        threads.add(threading.current_thread().name)
        return 1.0

    runner = RewardRunner(reward)

    def submit(problems, texts):
        submitted_at.append(core_steps["n"])
        return runner.submit_answers(problems, texts)

    outcome = run_queue_round(engine, problems, range(8), [False] * 8, 2, 2, 8, _params(5), submit, _Lengths())
    assert len(submitted_at) == 8 and min(submitted_at) < outcome.stats.decode_steps
    assert threads == {"reward"} and len(outcome.stats.reward_latency_s) == 8
    assert outcome.rewards.scores.tolist() == [1.0] * 16
    runner.close()


def test_filtering_replaces_uninformative_groups_up_to_a_limit(scripted_lengths):
    rng = random.Random(6)
    problems, engine = _problems(rng, 30), NativeEngine(scripted_lengths())
    stream = iter(range(6, 30))
    runner = RewardRunner(lambda p, c, r: float(p in ("0", "1", "2")))  # only three prompts can be informative
    runner_varied = RewardRunner(lambda p, c, r: float(p in ("0", "1", "2") and len(c) % 2))
    for scorer in (runner, runner_varied):
        outcome = _round(
            engine, problems, range(6), 4, 4, 9, scorer, more=lambda: next(stream), filter_groups=True, max_launched=10
        )
        assert len(outcome.launched) == 10 and outcome.stats.launched_prompts == 10
        assert len(outcome.trained) == 4 and outcome.stats.filled_with_filtered >= 1
        assert outcome.stats.filtered_groups >= 7
        runner.close()


def test_the_schedule_is_checked():
    with pytest.raises(ConfigError, match="rollout.schedule 'fifo'"):
        RolloutCallback(schedule="fifo")
    with pytest.raises(ConfigError, match="need rollout.schedule=queue"):
        RolloutCallback(extra_prompts=2)
    with pytest.raises(ConfigError, match="rollout.max_running"):
        RolloutCallback(schedule="queue", max_running=0)
    with pytest.raises(ConfigError, match="unknown rollout setting.*extra_prompt$"):
        RolloutCallback(schedule="queue", extra_prompt=2)


POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def _fit(cpu_trainer, steps=4, policy=POLICY, **schedule):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=64, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("1"))  # a reward the random policy sometimes earns
    module = GRPOModule(policy, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=4, max_new_tokens=5))
    callback = RolloutCallback(**schedule)
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    return module, trainer, callback


def test_grpo_with_queue_scheduling_trains_the_loaders_prompts_like_the_batch_schedule(cpu_trainer):
    """No redundant prompts: the stream draws the loader's order and every group completes, so the weights are
    the batch schedule's, bit for bit."""
    batch, _, _ = _fit(cpu_trainer)
    queue, trainer, callback = _fit(cpu_trainer, schedule="queue")
    for (name, a), (_, b) in zip(batch.model.named_parameters(), queue.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert trainer.callback_metrics["queue/occupancy"] > 0
    assert callback.sampler.planner.returned == []


def test_on_the_llama_family_queue_scheduling_trains_like_the_batch_schedule_and_filters(
    cpu_trainer, llama_family_policy
):
    batch, _, _ = _fit(cpu_trainer, policy=llama_family_policy)
    queue, _, _ = _fit(cpu_trainer, policy=llama_family_policy, schedule="queue")
    torch.manual_seed(0)
    start = GRPOModule(llama_family_policy)
    start.configure_model()  # the weights both runs started from
    moved = 0.0
    for (name, a), (_, b), (_, s) in zip(batch.model.named_parameters(), queue.model.named_parameters(),
                                         start.model.named_parameters(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        moved = max(moved, (a - s).abs().max().item())
    assert 0 < moved < 0.01  # four small steps moved the policy from its start: equal weights mean equal steps
    _, trainer, _ = _fit(cpu_trainer, policy=llama_family_policy, schedule="queue", extra_prompts=3,
                         filter_groups=True)  # fmt: skip
    assert trainer.callback_metrics["queue/launched_prompts"] >= 7


def test_grpo_with_redundant_prompts_logs_the_queue_and_restores_its_state(cpu_trainer):
    module, trainer, callback = _fit(cpu_trainer, schedule="queue", extra_prompts=3, filter_groups=True)
    metrics = trainer.callback_metrics
    for key in ("queue/occupancy", "queue/waiting", "queue/aborted_requests", "queue/filtered_groups",
                "queue/reward_latency_s", "queue/launched_prompts", "queue/trained_length_mean"):  # fmt: skip
        assert key in metrics, key
    assert metrics["queue/launched_prompts"] >= 7
    restored = RolloutCallback(schedule="queue", extra_prompts=3, filter_groups=True)
    restored.load_state_dict(callback.state_dict())  # before setup, as Lightning restores a checkpoint
    restored.setup(trainer, module, "fit")
    assert restored.sampler.state_dict() == callback.sampler.state_dict()


@settings(max_examples=150, deadline=None)
@given(
    p0=st.integers(1, 6),
    extra=st.integers(0, 6),
    size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_any_step_outcome_keeps_the_planners_invariants(p0, extra, size, seed, data):
    """Whatever a step trains, filters out or returns: returned prompts come first and protected, a protected
    prompt is never returned again, and every drawn prompt is consumed once or still waits."""
    if size < p0 + extra:
        size = p0 + extra
    planner, stream = QueuePlanner(p0, extra), PromptStream(size, seed)
    drawn, take = [], stream.take
    stream.take = lambda count, at_least: drawn.extend(taken := take(count, at_least)) or taken
    consumed = []
    for _ in range(data.draw(st.integers(1, 15), label="steps")):
        waiting = list(planner.returned)
        launch, protected = planner.plan(stream.take)
        first = waiting[:p0]
        assert launch[: len(first)] == first and protected == [i < len(first) for i in range(len(launch))]
        assert len(launch) == (p0 if len(waiting) >= p0 else p0 + extra)
        # the engine's outcome: protected positions are consumed; others trained, filtered out or returned
        fates = [
            data.draw(st.sampled_from(["trained", "filtered"] if guard else ["trained", "filtered", "returned"]))
            for guard in protected
        ]
        outcome = SimpleNamespace(launched=launch, returned=[k for k, fate in enumerate(fates) if fate == "returned"])
        planner.finish(outcome)
        consumed += [p for p, fate in zip(launch, fates, strict=True) if fate != "returned"]
        assert sorted(drawn) == sorted(consumed + planner.returned)
        restored = QueuePlanner(p0, extra)
        restored.load_state_dict(planner.state_dict())
        assert restored == planner
