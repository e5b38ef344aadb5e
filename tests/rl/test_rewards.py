"""Rewards on real answers (GSM8K, math-verify) and the runner's handling of rewards that throw or hang."""

import json
import math
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from zoo.errors import ConfigError
from zoo.rl.rewards import (
    FormatReward,
    RewardRunner,
    WeightedReward,
    exact_match_reward,
    gsm8k_answer,
    gsm8k_reward,
    math_reward,
    overlong_penalty,
    reward_function,
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


def test_hung_calls_do_not_starve_the_healthy_ones():
    never = threading.Event()
    runner = RewardRunner(lambda p, c, r: never.wait() if c == "h" else 1.0, timeout_s=0.5, workers=2)
    start = time.monotonic()
    batch = runner.score(["p"] * 4, ["h", "h", "ok", "ok"], ["r"] * 4)
    assert batch.scores.tolist() == [0.0, 0.0, 1.0, 1.0] and (batch.timeouts, batch.failures) == (2, 0)
    assert time.monotonic() - start < 1.0  # one limit, not one per call
    assert runner.score(["p"], ["ok"], ["r"]).scores.tolist() == [1.0]  # the hung workers were replaced


@pytest.mark.parametrize("workers", [1, 4, 20])
def test_a_batch_of_hung_calls_takes_one_limit_per_round_of_workers(workers):
    never = threading.Event()
    runner = RewardRunner(lambda p, c, r: never.wait() if c.startswith("h") else 1.0, timeout_s=0.2, workers=workers)
    completions = [f"h{i}" for i in range(20)] + ["ok"] * 5
    start = time.monotonic()
    batch = runner.score(["p"] * 25, completions, ["r"] * 25)
    elapsed = time.monotonic() - start
    assert batch.timeouts == 20 and batch.scores[20:].tolist() == [1.0] * 5
    assert 0.2 <= elapsed < 0.2 * math.ceil(20 / workers) + 0.5  # today's sequential waits took 20 limits


def test_a_hung_reward_does_not_keep_the_process_alive():
    script = (
        "import threading; from zoo.rl.rewards import RewardRunner; "
        "r = RewardRunner(lambda p, c, x: threading.Event().wait(), timeout_s=0.2, workers=2); "
        "print(r.score(['p'] * 3, ['c'] * 3, ['x'] * 3).timeouts)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr


@pytest.mark.parametrize(
    "result, reason",
    [
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        (-float("inf"), "not finite"),
        (None, "not a number"),
        ("abc", "not a number"),
        ([1.0], "not a number"),
        ((1.0,), "reward tuple"),
        ((1.0, 2.0), "reward tuple"),
        ((1.0, {"a": 1.0}, 3), "reward tuple"),
        ((float("nan"), {"a": 1.0}), "not finite"),
        ((1.0, {"a": float("inf")}), "sub-score 'a' is not finite"),
        ((1.0, {"a": "x"}), "sub-score 'a' is not a number"),
        ({"score": 1.0}, "not a number"),
    ],
)
def test_results_that_are_not_finite_scores_score_zero_and_are_counted(result, reason):
    runner = RewardRunner(lambda p, c, r: result if c == "bad" else (1.0, {"a": 0.5}), timeout_s=2, workers=2)
    batch = runner.score(["p"] * 3, ["ok", "bad", "ok"], ["r"] * 3)
    assert batch.scores.tolist() == [1.0, 0.0, 1.0] and (batch.failures, batch.timeouts) == (1, 0)
    assert reason in batch.errors[0]
    assert batch.parts["a"].tolist() == [0.5, 0.0, 0.5]


@pytest.mark.parametrize("result", [True, 1, np.float32(1.0), np.int64(1), torch.tensor(1.0)])
def test_numbers_of_any_real_type_are_scores(result):
    batch = RewardRunner(lambda p, c, r: result).score(["p"], ["c"], ["r"])
    assert batch.scores.tolist() == [1.0] and batch.failures == 0


def test_a_weighted_reward_with_a_non_finite_part_fails_as_a_whole():
    reward = WeightedReward({"a": (1.0, lambda p, c, r: 1.0), "b": (0.5, lambda p, c, r: float("nan"))})
    batch = RewardRunner(reward).score(["p"], ["c"], ["r"])
    assert batch.scores.tolist() == [0.0] and batch.failures == 1 and "not finite" in batch.errors[0]


def test_gsm8k_scores_the_last_answer_marker():
    completion = "First I thought #### 5, but checking again the total is 7.\n#### 7"
    assert gsm8k_answer(completion) == "7"
    assert gsm8k_reward("", completion, "#### 7") == 1.0 and gsm8k_reward("", completion, "5") == 0.0


def test_rewards_are_found_by_name_or_import_path():
    assert reward_function("math_verify") is math_reward and reward_function("exact_match") is exact_match_reward
    assert reward_function("zoo.rl.rewards:gsm8k_reward") is gsm8k_reward


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mathverify", "is neither a reward .*math_verify.* nor package.module:function"),
        ("zoo.rl.rewards:no_such_reward", "cannot be imported: .*no_such_reward"),
        ("no_such_package.rewards:check", "cannot be imported: No module named 'no_such_package'"),
        ("zoo.rl.rewards:REWARDS", "is not callable"),
        (":check", "is neither a reward"),
    ],
)
def test_a_reward_that_cannot_be_found_is_one_line_naming_the_key(spec, message):
    with pytest.raises(ConfigError, match=f"^data.reward '{re.escape(spec)}' {message}") as error:
        reward_function(spec)
    assert "\n" not in str(error.value)


def test_overlong_penalty_is_dapos_soft_punishment():
    """DAPO eq. 13 with L_max = 20, L_cache = 4: 0 up to 16 tokens, (16 - |y|) / 4 over the buffer, -1 beyond."""
    lengths = torch.tensor([0, 10, 16, 17, 18, 20, 25])
    expected = [0.0, 0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_penalty(lengths, 20, 4).tolist() == expected
    assert overlong_penalty(lengths, 20, 4, factor=0.5).tolist() == [v * 0.5 for v in expected]


def test_a_reward_setting_that_is_not_text_is_one_line():
    with pytest.raises(ConfigError, match=r"^data.reward must be a reward's name or package.module:function, got 3$"):
        reward_function(3)
