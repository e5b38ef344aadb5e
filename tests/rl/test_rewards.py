"""Rewards on real answers (GSM8K, math-verify) and the runner's handling of rewards that throw or hang."""

import json
import time

import pytest

from zoo.rl.rewards import (
    FormatReward,
    RewardRunner,
    WeightedReward,
    exact_match_reward,
    gsm8k_answer,
    gsm8k_reward,
    math_reward,
)


def test_gsm8k_answers_on_the_real_test_set(shared_data):
    rows = [json.loads(line) for line in shared_data("gsm8k/test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    for row in rows:
        answer = gsm8k_answer(row["answer"])
        assert answer is not None and float(answer) == float(answer)
        assert gsm8k_reward(row["question"], row["answer"], row["answer"]) == 1.0
        assert gsm8k_reward(row["question"], f"#### {float(answer) + 1}", row["answer"]) == 0.0


@pytest.mark.parametrize(
    "completion, reference, expected",
    [("so the total is #### 1,234", "#### 1234", 1.0), ("#### 7.0", "7", 1.0), ("the answer is 7", "7", 0.0)],
)
def test_gsm8k_reward_by_hand(completion, reference, expected):
    assert gsm8k_reward("", completion, reference) == expected


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
        ("We get \\boxed{4}", "3", 0.0),
        ("x = \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("no answer here", "5", 0.0),
    ],
)
def test_math_reward_through_math_verify(completion, reference, expected):
    assert math_reward("", completion, reference) == expected


def test_math_reward_on_aime_answers(shared_data):
    rows = [json.loads(line) for line in shared_data("aime24/test.jsonl").read_text().splitlines()]
    for row in rows[:10]:
        assert math_reward(row["problem"], f"The answer is $\\boxed{{{row['answer']}}}$", str(row["answer"])) == 1.0


def test_format_exact_and_weighted():
    fmt = FormatReward(r"<answer>.*</answer>")
    assert fmt("", "x <answer>4</answer>", "") == 1.0 and fmt("", "4", "") == 0.0
    assert exact_match_reward("", " 42\n", "42") == 1.0
    combined = WeightedReward({"format": (0.2, fmt), "correct": (1.0, exact_match_reward)})
    total, parts = combined("", "<answer>4</answer>", "<answer>4</answer>")
    assert total == pytest.approx(1.2) and parts == {"format": 1.0, "correct": 1.0}


def test_runner_scores_throwing_and_hanging_rewards_zero_and_counts_them():
    def flaky(prompt, completion, reference):
        if completion == "boom":
            raise RuntimeError("reward crashed")
        if completion == "hang":
            time.sleep(2)
        return 1.0

    runner = RewardRunner(flaky, timeout_s=0.2, workers=2)
    batch = runner.score(["p"] * 4, ["ok", "boom", "hang", "ok"], ["r"] * 4)
    assert batch.scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert (batch.failures, batch.timeouts) == (1, 1) and "reward crashed" in batch.errors[0]
    again = runner.score(["p"], ["ok"], ["r"])  # a fresh pool: the hung call does not block the next batch
    assert again.scores.tolist() == [1.0] and (runner.total_failures, runner.total_timeouts) == (1, 1)


def test_runner_reports_named_parts():
    reward = WeightedReward({"a": (1.0, lambda p, c, r: 1.0), "b": (0.5, lambda p, c, r: float(c == "x"))})
    batch = RewardRunner(reward).score(["", ""], ["x", "y"], ["", ""])
    assert batch.scores.tolist() == [1.5, 1.0]
    assert batch.parts["b"].tolist() == [1.0, 0.0]
