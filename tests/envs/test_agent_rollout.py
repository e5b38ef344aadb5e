"""Multi-turn rollout with environments (zoo/envs/agent_rollout.py): environment-level asynchrony gives the
synchronous loop's trajectories; observation tokens stay out of the loss and the policy's log-probs are the
trainer's; redundancy keeps the first finishers; a failing environment scores 0 and is counted."""

import time

import pytest
import torch

from zoo.envs import Step
from zoo.envs.agent_rollout import run_agent_rollout
from zoo.envs.simulated import SimulatedEnvironment
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.models import build_model, config_from_dict
from zoo.rl.rollout import assemble, token_logprobs

CONFIG = config_from_dict(dict(arch="gpt_neox", vocab_size=16, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=128))  # fmt: skip


class _Characters:
    """Token k is character "abcdefghijklmno"[k - 1]; 0 ends a turn."""

    letters = "abcdefghijklmno"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.letters.index(c) + 1 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.letters[i - 1] for i in ids if i)

    def get_vocab(self):
        return {"</turn>": 0, **{c: k + 1 for k, c in enumerate(self.letters)}}


PROBLEMS = [{"prompt_ids": [1, 2, k]} for k in (3, 4, 5, 6)]
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=(0,), seed=11)


def _engine():
    torch.manual_seed(0)
    return NativeEngine(build_model(CONFIG).eval(), tokenizer=_Characters())


def _simulated(latency=0.002):
    def make(problem, seed):
        return SimulatedEnvironment(latency, latency, turns=3, observation="ok", target="c", seed=seed)

    return make


def _rollout(engine=None, environment=None, tokenizer=None, **options):
    options = {"group_size": 2, "max_turns": 3, "max_context": 64, **options}
    return run_agent_rollout(engine or _engine(), PROBLEMS, environment or _simulated(), PARAMS,
                             tokenizer or _Characters(), **options)  # fmt: skip


def test_environment_level_asynchrony_gives_the_synchronous_trajectories():
    engine = _engine()
    asynchronous, synchronous = _rollout(engine), _rollout(engine, synchronous=True)
    for a, b in zip(asynchronous.trajectories, synchronous.trajectories, strict=True):
        assert (a.group, a.member, a.context, a.policy_mask, a.reward, a.turns) == (
            b.group, b.member, b.context, b.policy_mask, b.reward, b.turns)  # fmt: skip
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))
    assert asynchronous.groups == [0, 1, 2, 3] and asynchronous.stats.env_steps == 4 * 2 * 3
    assert all(t.finish_reason == "done" and t.turns == 3 for t in asynchronous.trajectories)


def test_observations_stay_out_of_the_loss_and_the_policys_logprobs_are_the_trainers():
    engine = _engine()
    outcome = _rollout(engine)
    samples = outcome.samples()
    batch = assemble([p["prompt_ids"] for p in PROBLEMS], samples)
    ok = _Characters()("ok")["input_ids"]
    for row, (sample, t) in enumerate(zip(samples, outcome.trajectories, strict=True)):
        completion = t.context[t.prompt_length :]
        observed = [tok for tok, m in zip(completion, sample.mask, strict=True) if not m]
        assert observed == ok * 3  # every observation, and nothing else, is masked out
        assert batch.response_mask[row].sum().item() == sum(sample.mask)
    trainer, _ = token_logprobs(engine.model, batch.input_ids)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.rollout_logprobs[mask], trainer[mask], rtol=1e-4, atol=1e-4)


def test_redundancy_keeps_the_first_finishers():
    def uneven(problem, seed):  # the first problem's environments are slow
        slow = problem["prompt_ids"][-1] == 3
        return SimulatedEnvironment(0.05 if slow else 0.0, 0.0, turns=2, observation="ok", seed=seed)

    outcome = _rollout(environment=uneven, redundancy=1, extra_groups=1)  # 4 groups of 3 launched, 3 groups of 2 kept
    assert outcome.groups == [1, 2, 3]  # the slow group finished last and was not needed
    assert [(t.group, t.finish_reason) for t in outcome.trajectories] == [(g, "done") for g in (1, 1, 2, 2, 3, 3)]
    assert outcome.stats.aborted_trajectories == 3 + 3  # the slow group's three, and each kept group's third


def test_a_failing_environment_scores_zero_and_is_counted():
    class Broken(SimulatedEnvironment):
        def step(self, action):
            raise ConnectionError("search backend down")

    def environment(problem, seed):
        return Broken(0, 0) if problem["prompt_ids"][-1] == 4 else SimulatedEnvironment(0, 0, 1, observation="ok")

    outcome = _rollout(environment=environment)
    failed = [t for t in outcome.trajectories if t.finish_reason == "error"]
    assert len(failed) == 2 and all(t.reward == 0 and t.turns == 1 for t in failed)
    assert outcome.stats.env_failures == 2


class _Hangs(SimulatedEnvironment):
    def step(self, action):
        time.sleep(5)
        return Step("ok", 1.0, True)


class _NaN(SimulatedEnvironment):
    def step(self, action):
        return Step("ok", float("nan"), True)


class _NoStep(SimulatedEnvironment):
    def step(self, action):
        return {"observation": "ok"}


class _BrokenReset(SimulatedEnvironment):
    def reset(self, problem):
        raise FileNotFoundError("index.bin")


class _HangingReset(SimulatedEnvironment):
    def reset(self, problem):
        time.sleep(60)


class _NumberObservation(SimulatedEnvironment):
    def step(self, action):
        return Step(123, 1.0)


class _BytesObservation(SimulatedEnvironment):
    def step(self, action):
        return Step(b"ok")


class _TextReward(SimulatedEnvironment):
    def step(self, action):
        return Step("ok", "1")


class _ResetNotText(SimulatedEnvironment):
    def reset(self, problem):
        return None


@pytest.mark.parametrize(
    "bad, reason, counter, named",
    [
        (_Hangs, "timeout", "env_timeouts", None),
        (_NaN, "error", "env_failures", "finite reward"),
        (_NoStep, "error", "env_failures", "not a Step"),
        (_BrokenReset, "error", "env_failures", "reset: FileNotFoundError: index.bin"),
        (_HangingReset, "error", "env_timeouts", None),
        (_NumberObservation, "error", "env_failures", "an observation of int, not a text"),
        (_BytesObservation, "error", "env_failures", "an observation of bytes, not a text"),
        (_TextReward, "error", "env_failures", "the reward '1', not a finite reward"),
        (_ResetNotText, "error", "env_failures", "reset returned None, not a text"),
    ],
)
def test_a_hanging_or_malformed_environment_ends_its_trajectory_with_reward_0(bad, reason, counter, named):
    def environment(problem, seed):
        return bad(0, 0) if problem["prompt_ids"][-1] == 4 else SimulatedEnvironment(0, 0, 1, observation="ok")

    start = time.perf_counter()
    outcome = _rollout(environment=environment, env_timeout_s=0.2)
    assert time.perf_counter() - start < 3  # a hung step is abandoned, not waited for
    bad_ones = [t for t in outcome.trajectories if t.finish_reason == reason]
    assert len(bad_ones) == 2 and all(t.reward == 0 for t in bad_ones)
    assert getattr(outcome.stats, counter) == 2
    assert named is None or named in outcome.stats.errors[0]


def test_a_huge_observation_is_cut_before_it_is_tokenized():
    """9 MB of observation: only what fits the context is tokenized, and the trajectory ends at the context."""
    calls = []

    class _Counting(_Characters):
        def __call__(self, text, add_special_tokens=False):
            calls.append(len(text))
            return super().__call__(text, add_special_tokens)

    def flood(problem, seed):
        env = SimulatedEnvironment(0, 0, turns=3, observation="ok", seed=seed)
        env.step = lambda action: Step("a" * 9_000_000)
        return env

    outcome = _rollout(environment=flood, max_context=64, tokenizer=_Counting())
    assert {t.finish_reason for t in outcome.trajectories} == {"context"}
    assert all(len(t.context) == 64 for t in outcome.trajectories) and max(calls) < 1_000


@pytest.mark.parametrize("max_turns, max_context, reason", [(2, 64, "turns"), (5, 14, "context")])
def test_a_trajectory_ends_at_its_turn_or_context_limit(max_turns, max_context, reason):
    def endless(problem, seed):
        env = SimulatedEnvironment(0, 0, turns=100, observation="ok", seed=seed)
        env.step = lambda action: Step("ok")
        return env

    outcome = _rollout(environment=endless, max_turns=max_turns, max_context=max_context)
    assert {t.finish_reason for t in outcome.trajectories} == {reason}
    assert all(len(t.context) <= max_context for t in outcome.trajectories)
