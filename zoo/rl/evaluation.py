"""pass@k of a policy on a set of prompts: the task's correctness, whatever reward trains the policy.

For every prompt ``n`` completions are sampled (greedy when ``temperature`` is 0, then ``n`` is 1); a completion
is correct when the task's verifier (``zoo.tasks.base.Task.reward``, a datamodule's ``correctness``: 0 or 1) scores
it above 0.5. A training reward that is not correctness (BARD's budget reward, which pays for fidelity too) is
reported as ``reward`` and never decides pass@k. pass@k uses the unbiased estimator of Chen et al. (2021):
``1 − C(n − c, k) / C(n, k)`` for ``c`` correct completions out of ``n``, averaged over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import torch

from zoo.generation import in_place_engine
from zoo.generation.sampling import SamplingParams
from zoo.rl.rewards import RewardBatch, RewardRunner


def pass_at_k(n: int, correct: int, k: int) -> float:
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - comb(n - correct, k) / comb(n, k)


def solved_groups(result: RewardBatch, group_size: int) -> torch.Tensor:
    """The share of a training batch's prompts with a correct completion among their ``group_size``: correctness is
    a shaped reward's ``correct`` part (BARD's budget reward reports it), else the reward itself."""
    correct = result.parts.get("correct", result.scores)
    return (correct.view(-1, group_size).max(1).values > 0.5).float().mean()


def evaluate_pass_at_k(
    engine: Any,  # any rollout engine (zoo.generation)
    tokenizer: Any,
    problems: Sequence[dict[str, Any]],
    reward: RewardRunner,
    params: SamplingParams,
    n: int = 1,
    ks: Sequence[int] = (1,),
    correctness: RewardRunner | None = None,
) -> dict[str, torch.Tensor]:
    """Per-prompt tensors: ``pass@k`` for every k by ``correctness`` (None: ``reward`` is the task's correctness),
    ``reward`` (mean over the n completions), ``length``."""
    result = engine.generate([p["prompt_ids"] for p in problems], n, params)
    texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in result.samples]
    prompts = [problems[s.prompt_index]["prompt"] for s in result.samples]
    references = [problems[s.prompt_index]["reference"] for s in result.samples]
    scores = reward.score(prompts, texts, references).scores.view(len(problems), n)
    verified = scores if correctness is None else correctness.score(prompts, texts, references).scores.view_as(scores)
    correct = (verified > 0.5).sum(1).tolist()
    out = {f"pass@{k}": torch.tensor([pass_at_k(n, c, k) for c in correct]) for k in ks}
    out["reward"] = scores.mean(1)
    out["length"] = torch.tensor([len(s.token_ids) for s in result.samples], dtype=torch.float).view(-1, n).mean(1)
    return out


def evaluate_on_validation_prompts(
    model: torch.nn.Module, datamodule: Any, settings: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """pass@k of ``model`` on ``datamodule.val_prompts`` with its correctness, reward and tokenizer. ``settings``:
    ``n``, ``ks``, ``temperature``, ``max_new_tokens``; generation stops at the data's stop tokens (EOS, end of
    turn)."""
    tokenizer = datamodule.tokenizer
    params = SamplingParams(
        max_new_tokens=settings.get("max_new_tokens", 64),
        temperature=settings.get("temperature", 0.0),
        stop_token_ids=datamodule.stop_token_ids,
        seed=settings.get("seed", 0),
    )
    rewards, correctness = RewardRunner(datamodule.reward), correctness_runner(datamodule)
    try:
        return evaluate_pass_at_k(
            in_place_engine(model, tokenizer),
            tokenizer,
            datamodule.val_prompts,
            rewards,
            params,
            settings.get("n", 1),
            settings.get("ks", [1]),
            correctness,
        )
    finally:
        rewards.close()
        if correctness is not None:
            correctness.close()


def correctness_runner(datamodule: Any, timeout_s: float = 10.0) -> RewardRunner | None:
    """A runner of the datamodule's ``correctness`` (the task's verifier) where its training ``reward`` is another
    function; None where the reward is the correctness (a datamodule without ``correctness`` says so)."""
    correctness = getattr(datamodule, "correctness", datamodule.reward)
    return None if correctness is datamodule.reward else RewardRunner(correctness, timeout_s=timeout_s)
