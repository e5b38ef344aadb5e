"""pass@k (zoo/rl/evaluation.py) counts the task's correctness, never a shaped reward: under BARD's budget reward a
wrong answer within budget (additive ablation: reward 1.0) does not pass, and a right answer far under its budget
(tracking fidelity: reward 0.22) does."""

import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.generation.engine import GenerationResult, Sample
from zoo.generation.sampling import SamplingParams
from zoo.rl.evaluation import correctness_runner, evaluate_pass_at_k, pass_at_k, solved_groups
from zoo.rl.rewards import RewardBatch, RewardRunner


class _Scripted:
    """An engine that answers prompt i with ``texts[i]`` (``n`` times)."""

    def __init__(self, tokenizer, texts):
        self.ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def generate(self, prompts, n, params):
        return GenerationResult(
            [Sample(i, self.ids[i], [0.0] * len(self.ids[i]), "stop") for i in range(len(prompts)) for _ in range(n)]
        )


def _thinking(data, tokens: int) -> str:
    words = ["a"]
    while data.count_tokens(" ".join(words + ["a"])) <= tokens:
        words.append("a")
    return " ".join(words)


@pytest.mark.parametrize(
    "budgets, right, share",
    [
        (dict(combine="sum"), False, 0.5),  # a wrong answer within budget: 0 + 1·g = 1.0
        (dict(fidelity="tracking"), True, 0.63),  # a right answer 37% under budget: exp(-0.37/0.25) = 0.23
    ],
)
def test_pass_at_k_counts_correctness_under_a_budget_reward(budgets, right, share):
    data = PromptDataModule(task="thinking", train_size=50, val_size=4, budgets=dict(levels=[60], **budgets))
    data.setup()
    problems = data.val_prompts
    texts = []
    for p in problems:
        answer = p["reference"] if right else p["reference"] + "9"
        texts.append(f"<think>{_thinking(data, int(share * 60))}</think> {answer}")
    rewards, correctness = RewardRunner(data.reward), correctness_runner(data)
    assert correctness is not None  # the budget reward is not the task's verifier
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    results = evaluate_pass_at_k(
        _Scripted(data.tokenizer, texts), data.tokenizer, problems, rewards, params, correctness=correctness
    )
    rewards.close(), correctness.close()
    reward = results["reward"]
    assert ((reward > 0.5) != right).all(), reward  # the reward alone would decide the opposite
    assert results["pass@1"].tolist() == [float(right)] * len(problems)


def test_a_task_whose_reward_is_its_verifier_scores_once():
    data = PromptDataModule(task="arithmetic", train_size=50, val_size=4)
    data.prepare_data()
    assert data.correctness is data.reward and correctness_runner(data) is None


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 2) == 1
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 − C(3,2)/C(5,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_solved_groups_count_correctness_not_the_shaped_reward():
    """Three prompts of two completions: wrong answers within budget score 1.0 (prompts 0 and 1, as under BARD's
    additive reward), a right one far over budget 0.2 (prompt 2, as under the product): only prompt 2 is solved."""
    scores, correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.2, 0.0]), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert solved_groups(RewardBatch(scores, {"correct": correct}), 2).item() == pytest.approx(1 / 3)
    plain = RewardBatch(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # a verifier's reward is its own correctness
    assert solved_groups(plain, 2).item() == 0.5


def test_data_reward_replaces_the_tasks_check_for_the_reward_and_for_pass_at_k():
    """A chat model's sentence answer: the arithmetic task's exact match fails it, math-verify's final-answer check
    (data.reward=math_verify) passes it, in training rewards and in pass@1 alike."""
    outcomes = {}
    for reward in (None, "math_verify"):
        data = PromptDataModule(task="arithmetic", train_size=8, val_size=4, reward=reward)
        data.setup()
        problems = data.val_prompts
        texts = [f"The answer is {p['reference']}." for p in problems]
        rewards, correctness = RewardRunner(data.reward), correctness_runner(data)
        assert correctness is None  # the reward is the task's verifier
        params = SamplingParams(max_new_tokens=16, temperature=0.0)
        results = evaluate_pass_at_k(_Scripted(data.tokenizer, texts), data.tokenizer, problems, rewards, params)
        rewards.close()
        outcomes[reward] = results["pass@1"].tolist(), results["reward"].tolist()
    assert outcomes[None] == ([0.0] * 4, [0.0] * 4)
    assert outcomes["math_verify"] == ([1.0] * 4, [1.0] * 4)


def test_data_reward_with_budgets_is_refused():
    with pytest.raises(ConfigError, match="data.reward replaces the task's check; with data.budgets"):
        PromptDataModule(task="thinking", reward="math_verify", budgets=dict(levels=[60]))
