"""The utility of a reasoning path (RAVR, arXiv:2510.25206; notes §5.3 item 3): how likely the policy finds the
reference answer after it. ``s(z) = π(y* | x, z)`` is estimated teacher-forced on the policy itself, after a fixed
answer cue that follows the path (e.g. ``" The answer is "``), and length-normalised: the geometric mean of the
answer tokens' probabilities, ``exp(mean_i log π(y*_i | x, z, cue, y*_<i))``, so answers of different lengths
compare (the paper's exact normalisation is not published). No-grad forwards over the right-padded batch, ``rows``
sequences at a time (each group trimmed to its longest; None: one forward), log-probs from
:func:`zoo.rl.rollout.token_logprobs` (never the full-vocabulary fp32 logits of zoo's models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoo.rl.rollout import token_logprobs


@torch.no_grad()
def answer_utility(
    model: torch.nn.Module,
    contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    cue: Sequence[int] = (),
    rows: int | None = None,
) -> torch.Tensor:
    """s (N,) for every ``contexts[i]`` (prompt + path tokens) followed by ``cue`` and ``answers[i]`` (non-empty)."""
    sequences = [list(c) + list(cue) + list(a) for c, a in zip(contexts, answers, strict=True)]
    if any(len(a) == 0 for a in answers):
        raise ValueError("every answer needs at least one token")
    device = next(model.parameters()).device
    ids = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long)
    targets = torch.zeros_like(ids, dtype=torch.bool)  # positions whose token is an answer token
    for row, (sequence, answer) in enumerate(zip(sequences, answers, strict=True)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        targets[row, len(sequence) - len(answer) : len(sequence)] = True
    utilities = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), rows or len(sequences)):
            group = slice(start, start + (rows or len(sequences)))
            width = max(map(len, sequences[group]))
            logprobs = token_logprobs(model, ids[group, :width].to(device))[0]
            mask = targets[group, 1:width].to(device)
            utilities.append(torch.exp((logprobs * mask).sum(1) / mask.sum(1)))
    finally:
        model.train(was_training)
    return torch.cat(utilities)
