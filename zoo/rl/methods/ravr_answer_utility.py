"""The utility of a reasoning path (RAVR, arXiv:2510.25206; notes §5.3 item 3): how likely the policy finds the
reference answer after it. ``s(z) = π(y* | x, z)`` is estimated teacher-forced on the policy itself, after a fixed
answer cue that follows the path (e.g. ``" The answer is "``), and length-normalised: the geometric mean of the
answer tokens' probabilities, ``exp(mean_i log π(y*_i | x, z, cue, y*_<i))``, so answers of different lengths
compare (the paper's exact normalisation is not published). No-grad forwards over the sequences in micro-batches
(``size`` sequences and ``tokens`` tokens a forward, :meth:`zoo.rl.rollout.RolloutBatch.micro_batches`; None, None:
one forward), padded or ``packed``, log-probs from :func:`zoo.rl.rollout.token_logprobs` (never the
full-vocabulary fp32 logits of zoo's models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoo.rl.rollout import RolloutBatch, token_logprobs


@torch.no_grad()
def answer_utility(
    model: torch.nn.Module,
    contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    cue: Sequence[int] = (),
    size: int | None = None,
    tokens: int | None = None,
    packed: bool = False,
) -> torch.Tensor:
    """s (N,) for every ``contexts[i]`` (prompt + path tokens) followed by ``cue`` and ``answers[i]`` (non-empty)."""
    sequences = [list(c) + list(cue) + list(a) for c, a in zip(contexts, answers, strict=True)]
    if any(len(a) == 0 for a in answers):
        raise ValueError("every answer needs at least one token")
    device = next(model.parameters()).device
    ids = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long)
    answer = torch.zeros(len(sequences), ids.shape[1] - 1)  # target positions whose token is an answer token
    for row, (sequence, tokens_of_answer) in enumerate(zip(sequences, answers, strict=True)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        answer[row, len(sequence) - len(tokens_of_answer) - 1 : len(sequence) - 1] = 1
    batch = RolloutBatch(ids, answer, torch.zeros_like(answer), torch.zeros(len(sequences), dtype=torch.long))
    batch = batch.to(device)

    def forward(part: RolloutBatch) -> torch.Tensor:
        return token_logprobs(model, part.input_ids, lengths=part.lengths() if packed else None)[0]

    was_training = model.training
    model.eval()
    try:
        logprobs = batch.map_micro_batches(forward, size, tokens, packed)
    finally:
        model.train(was_training)
    mask = batch.response_mask
    return torch.exp((logprobs * mask).sum(1) / mask.sum(1))
