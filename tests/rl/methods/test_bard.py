"""Thinking budgets (BARD): the teacher's chains, the compressor that must hit every budget it claims, the budget
fidelity and reward against hand-computed values, and the data modules' ``budgets`` option."""

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.datamodules.prompts import PromptDataModule
from zoo.datamodules.sft import SFTDataModule
from zoo.errors import ConfigError, DataError
from zoo.rl.methods.bard import (
    BudgetReward,
    compress,
    read_budget,
    split_completion,
    thinking,
    tracking_fidelity,
    upper_fidelity,
)
from zoo.tasks.base import Thought
from zoo.tasks.registry import thinking_problems
from zoo.text.tokenizer import train_bpe

PROBLEMS = thinking_problems(300, seed=11, terms=4)
TOKENIZER = train_bpe([p.prompt + p.solution for p in PROBLEMS[:200]], 200)


def count(text: str) -> int:
    return len(TOKENIZER(text, add_special_tokens=False)["input_ids"])


def test_every_step_of_the_teachers_chain_is_true_arithmetic():
    for problem in PROBLEMS:
        for thought in problem.thoughts:
            for statement in re.findall(r"[\d+-]+=\d+", thought.text):
                left, right = statement.split("=")
                assert eval(left) == int(right), (problem.prompt, thought.text)
        essentials = [t.text for t in problem.thoughts if not t.optional]
        assert essentials[-1].endswith(f"={problem.reference}") and str(eval(problem.prompt[:-1])) == problem.reference
        assert split_completion(problem.solution) == (thinking(problem.thoughts), problem.reference)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(200, 299), budget=st.integers(1, 160))
def test_the_compressor_hits_every_budget_it_claims_on_unseen_questions(index, budget):
    thoughts = PROBLEMS[index].thoughts  # questions the tokenizer was not trained on
    kept = compress(thoughts, budget, count)
    essentials = [t for t in thoughts if not t.optional]
    if kept is None:
        assert count(thinking(essentials)) > budget
        return
    assert count(thinking(kept)) <= budget
    assert [t for t in kept if not t.optional] == essentials
    assert kept == [t for t in thoughts if t in kept]  # chain order
    for dropped in (t for t in thoughts if t not in kept):  # nothing more would have fit
        assert count(thinking([t for t in thoughts if t in kept or t is dropped])) > budget


def test_the_compressor_keeps_lower_priorities_first():
    thoughts = [Thought("a b", True, 2), Thought("c"), Thought("d e", True, 1), Thought("f g h", True, 1)]
    words = lambda text: len(text.split())  # noqa: E731
    assert compress(thoughts, 0, words) is None
    assert [t.text for t in compress(thoughts, 1, words)] == ["c"]
    assert [t.text for t in compress(thoughts, 3, words)] == ["c", "d e"]
    assert [t.text for t in compress(thoughts, 6, words)] == ["c", "d e", "f g h"]
    assert [t.text for t in compress(thoughts, 7, words)] == ["c", "d e", "f g h"]  # "a b" would make 8
    assert [t.text for t in compress(thoughts, 8, words)] == ["a b", "c", "d e", "f g h"]


def test_fidelity_functions_by_hand():
    assert upper_fidelity(30, 32) == 1 and upper_fidelity(32, 32) == 1
    assert upper_fidelity(40, 32) == pytest.approx(0.75) and upper_fidelity(64, 32) == 0 and upper_fidelity(90, 32) == 0
    assert tracking_fidelity(32, 32) == 1
    assert tracking_fidelity(40, 32, 0.25) == pytest.approx(math.exp(-1))
    assert tracking_fidelity(24, 32, 0.5) == pytest.approx(math.exp(-0.5))


def test_the_reward_multiplies_correctness_by_fidelity_and_the_ablation_adds():
    words = lambda text: len(text.split())  # noqa: E731
    prompt = "Thinking budget: 4 tokens.\n12+3="
    long_right, short_wrong = "<think>a b c d e f</think> 15", "<think>a</think> 14"
    product = BudgetReward(words)
    assert product(prompt, long_right, "15") == (0.5, {"correct": 1.0, "fidelity": 0.5, "thinking_length": 6.0})
    assert product(prompt, short_wrong, "15")[0] == 0
    assert product(prompt, "<think>a b", "15")[0] == 0  # never closed: no answer
    assert product("12+3=", long_right, "15")[0] == 1  # no budget line: fidelity 1
    tracking = BudgetReward(words, fidelity="tracking", sigma=0.5)
    assert tracking(prompt, long_right, "15")[0] == pytest.approx(math.exp(-1))
    additive = BudgetReward(words, combine="sum", weight=0.5)
    assert additive(prompt, short_wrong, "15")[0] == pytest.approx(0.5)  # the shortcut: wrong, short, rewarded
    assert additive(prompt, long_right, "15")[0] == pytest.approx(1.25)
    assert read_budget(prompt) == 4 and read_budget("12+3=") is None


LEVELS = [16, 32, 64]


def test_budget_constrained_sft_is_a_data_option_giving_contrastive_examples():
    data = SFTDataModule(task="thinking", train_size=50, val_size=10, vocab_size=200, seq_len=256,
                         budgets=dict(levels=LEVELS))  # fmt: skip
    data.prepare_data()
    by_question: dict[str, list] = {}
    for problem in data.train_problems:
        budget = read_budget(problem.prompt)
        assert budget in LEVELS
        thought, answer = split_completion(problem.solution)
        assert answer == problem.reference and data.count_tokens(thought) <= budget
        by_question.setdefault(problem.prompt.split("\n", 1)[1], []).append((budget, data.count_tokens(thought)))
    assert len(by_question) == 50
    lengths = [sorted(v) for v in by_question.values() if len(v) > 1]
    assert lengths and all(a[1] <= b[1] for pairs in lengths for a, b in zip(pairs, pairs[1:], strict=False))
    assert any(pairs[0][1] < pairs[-1][1] for pairs in lengths)  # same question, different lengths
    assert isinstance(data.reward, BudgetReward)
    data.setup()
    assert len(data.train_set) > 0


def test_rl_prompts_draw_a_budget_each_and_validation_asks_every_level():
    data = PromptDataModule(task="thinking", train_size=60, val_size=5, vocab_size=200,
                            budgets=dict(levels=LEVELS, fidelity="tracking"))  # fmt: skip
    data.prepare_data()
    drawn = [read_budget(p.prompt) for p in data.train_problems]
    assert set(drawn) == set(LEVELS)
    assert [read_budget(p.prompt) for p in data.val_problems] == LEVELS * 5
    assert data.reward.fidelity == "tracking"


def test_bad_budget_settings_are_one_line():
    with pytest.raises(ConfigError, match="data.budgets.levels"):
        PromptDataModule(task="thinking", budgets=dict(levels=[]))
    with pytest.raises(ConfigError, match="unknown data.budgets setting.*level"):
        PromptDataModule(task="thinking", budgets=dict(level=[8]))
    with pytest.raises(ConfigError, match="data.budgets.fidelity"):
        PromptDataModule(task="thinking", budgets=dict(levels=[8], fidelity="lower"))
    data = PromptDataModule(task="arithmetic", train_size=10, val_size=2, budgets=dict(levels=[8]))
    with pytest.raises(DataError, match="no chains of thought"):
        data.prepare_data()


class _ScriptedPolicy:
    """A stand-in engine over a character-level tokenizer: asked under budget b it thinks b - 4 characters and
    answers right when b >= 32 (wrong below), asked without a budget it thinks 40 and answers right; after a forced
    ``</think>`` it answers right when it had thought at least 30 characters."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers = tokenizer, answers

    def generate(self, prompts, n, params):
        from zoo.generation.engine import GenerationResult, Sample

        samples = []
        for i, ids in enumerate(prompts):
            text = self.tokenizer.decode(ids)
            question = text.split("\n", 1)[-1].split("<think>")[0]
            answer = self.answers[question]
            if text.endswith("</think>"):  # the truncation baseline's second stage
                thought = text.split("<think>", 1)[1][: -len("</think>")]
                completion = f" {answer if len(thought) >= 30 else 'x'}"
            else:
                budget = read_budget(text) or 44
                completion = f"<think>{'y' * (budget - 4)}</think> {answer if budget >= 32 else 'x'}"
            tokens = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
            reason = "length" if len(tokens) > params.max_new_tokens else "stop"
            tokens = tokens[: params.max_new_tokens]
            samples.append(Sample(i, tokens, [0.0] * len(tokens), reason))
        return GenerationResult(samples)


def test_budget_evaluation_scores_each_level_and_the_truncation_baseline():
    from zoo.rl.methods.bard_evaluation import evaluate_budgets, length_correlation, markdown_table

    problems = thinking_problems(6, seed=2)
    characters = train_bpe(["<think></think> Thinking budget: tokens.\n0123456789+-=xy"], 100)  # no merges
    policy = _ScriptedPolicy(characters, {p.prompt: p.reference for p in problems})
    results = evaluate_budgets(policy, characters, problems, [20, 32, 48], 200, [0])
    by_budget = {r.budget: r for r in results}
    assert [by_budget[b].accuracy for b in (20, 32, 48)] == [0, 1, 1]
    assert [by_budget[b].length for b in (20, 32, 48)] == [16, 28, 44]
    assert all(r.within_budget == 1 for r in results)
    assert by_budget[20].relative_error == pytest.approx(4 / 20)
    # truncation: the unconstrained answer thinks 44 characters; cut at b it answers right only from 30 on
    assert [by_budget[b].truncated_accuracy for b in (20, 32, 48)] == [0, 1, 1]
    assert length_correlation(results) == pytest.approx(1.0)
    assert "| 20 | 0.000 | 0.000 | 16.0 | 1.000 | 0.200 |" in markdown_table(results)


def test_a_budget_agnostic_model_is_asked_without_the_control_line_and_cut_at_each_budget():
    from zoo.rl.methods.bard_evaluation import evaluate_budgets

    problems = thinking_problems(4, seed=3)
    characters = train_bpe(["<think></think> Thinking budget: tokens.\n0123456789+-=xy"], 100)
    policy = _ScriptedPolicy(characters, {p.prompt: p.reference for p in problems})
    results = evaluate_budgets(policy, characters, problems, [20, 32, 48], 200, [0], control_line=False)
    assert [r.accuracy for r in results] == [1, 1, 1] and [r.length for r in results] == [40, 40, 40]
    assert [r.within_budget for r in results] == [0, 0, 1]
    assert [r.truncated_accuracy for r in results] == [0, 1, 1]  # its 40-character chain cut at 20, 32, 48
