"""RAVR's objective (Lin et al. 2025, arXiv:2510.25206; the project's notes §5.3 and §5.5), as pure functions.

Per prompt x with reference answer y*, G prior paths z' ~ π(·|x) and G posterior paths z ~ π(·|x, y*, think-aloud
prompt) are sampled from one policy, and each path's utility s = π(y* | x, path) is measured under the
question-only prompt (:func:`utility_inputs`, :func:`zoo.rl.methods.ravr_answer_utility.answer_utility`). Then:

- the posterior policy gradient (on the path's tokens, up to and including the answer cue, never a token that
  holds an answer character, :func:`path_length`: the posterior's own answer is not part of z), with advantage
  (:func:`posterior_advantages`) the reward ``s(z) − b̂(x)`` against the baseline ``b̂ = mean s(z')`` over the
  prior samples (how much the posterior path beats what the question alone reaches), divided by the standard
  deviation of s over all 2G paths of the prompt (GRPO-style normalisation; normalising by the posterior group's
  own mean, as GRPO would, would cancel b̂);
- the prior update (:func:`distillation_weights`, :func:`weighted_path_nll`): weighted cross-entropy on each
  posterior path followed by the cue and the *reference* answer, under the question-only prompt (the sequence s
  was measured on), ``−Σ_z w(z) · mean_t log π(token_t | x, …)`` with ``w = max(0, s − b̂) / G`` (the gain itself,
  averaged over the prompt's paths), averaged over prompts: the utility-reweighted KL term that moves π(z|x)
  towards the good posterior paths, and the ELBO's reconstruction term log π(y*|x, z) on them. The weights are
  not renormalised to sum 1 per prompt: that would give a wrong path barely above a poor baseline full weight
  and teach the reference answer after it, which on the methods task unlearns the methods within 30 steps;
- a Monte-Carlo estimate of KL(q‖p) on the posterior samples, ``mean(log q(z) − log p(z))`` with both
  log-likelihoods summed over the path (:func:`sample_kl`).

The paper's exact weights, normalisation and prompts are not published; these are the notes' inferred version.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def answer_start(text: str, cue: str) -> int | None:
    """Where the answer begins in a completion: after the first ``cue``; None when the cue is missing."""
    at = text.find(cue)
    return None if at < 0 else at + len(cue)


def utility_inputs(
    tokenizer, prompt_ids: Sequence[Sequence[int]], completions: Sequence[str], answers: Sequence[str], cue: str
) -> tuple[list[list[int]], list[list[int]]]:
    """(context, answer) token ids for s = π(answer | prompt, path) per completion: the path is the completion's
    text before its first ``cue`` (all of it when there is none), and ``path + cue + answer`` is tokenized as one
    text, so the answer's tokens are those the policy reads after that path; the answer span starts at the
    first token that reaches into the answer."""
    contexts, targets = [], []
    for prompt, completion, answer in zip(prompt_ids, completions, answers, strict=True):
        start = answer_start(completion, cue)
        path = completion[: start - len(cue)] if start is not None else completion
        text = path + cue + answer
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        split = next((i for i, (_, end) in enumerate(offsets) if end > len(path) + len(cue)), None)
        if split is None:
            raise ValueError(f"the answer {answer!r} has no token of its own after {text[: len(path) + len(cue)]!r}")
        contexts.append(list(prompt) + ids[:split])
        targets.append(ids[split:])
    return contexts, targets


def path_length(tokenizer, token_ids: Sequence[int], cue: str) -> int | None:
    """How many of a completion's tokens make its path and the answer cue: the longest prefix whose text holds no
    character of the answer (what follows the first ``cue``), and of those the shortest (a token that adds no
    text, such as a stop token, stays out); None when the completion has no cue. Split on characters, not on the
    first prefix that holds the cue: a byte-level BPE joins a cue's trailing space to the answer's first word
    (``#### 42`` → ``####``, `` 42``), and that token belongs to the answer."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    start = answer_start(text, cue)
    if start is None:
        return None

    def reach(k: int) -> int:
        return len(tokenizer.decode(token_ids[:k], skip_special_tokens=True))

    def first(holds) -> int:  # the smallest k in [0, len] with holds(k), holds monotone
        low, high = 0, len(token_ids)
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if holds(middle) else (middle + 1, high)
        return low

    longest = first(lambda k: k == len(token_ids) or reach(k + 1) > start)
    length = reach(longest)
    return first(lambda k: reach(k) >= length)


def baseline(prior: torch.Tensor) -> torch.Tensor:
    """b̂ (B,): the mean utility of each prompt's prior paths (B, G)."""
    return prior.mean(-1)


def posterior_advantages(prior: torch.Tensor, posterior: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(s(z) − b̂) / (std of s over the prompt's prior and posterior paths + eps), per posterior path (B, G')."""
    pooled = torch.cat([prior, posterior], -1).std(-1, correction=0)
    return (posterior - baseline(prior)[:, None]) / (pooled[:, None] + eps)


def distillation_weights(prior: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """w (B, G') = max(0, s(z) − b̂) / G': the utility gained over the prior, averaged over the prompt's posterior
    paths (not renormalised: a path barely above a poor baseline keeps a weight as small as its gain)."""
    return (posterior - baseline(prior)[:, None]).clamp(min=0) / posterior.shape[-1]


def weighted_path_nll(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``−Σ_i weights_i · mean_t logprobs[i, t]`` over the path tokens ``mask`` marks (N, L); weights (N,)."""
    per_path = (logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return -(weights * per_path).sum()


def sample_kl(posterior_logq: torch.Tensor, prior_logp: torch.Tensor) -> torch.Tensor:
    """KL(q‖p) ≈ mean(log q(z) − log p(z)) over paths sampled from q (sequence log-likelihoods)."""
    return (posterior_logq - prior_logp).mean()
