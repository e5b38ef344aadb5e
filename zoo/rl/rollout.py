"""Rollout data: completions sampled for a batch of prompts, laid out for the trainer.

Each of the N = prompts × G sequences is ``prompt + completion``, right-padded to a common length L + 1.
Everything per token lives in *target* positions (L of them): position t holds the token at t + 1 and the
log-probs of predicting it, so ``response_mask`` marks the completion's tokens there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from zoo.generation.engine import GenerationResult, Sample
from zoo.rl.losses import token_entropy
from zoo.rl.rewards import RewardBatch


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # (N, L + 1) prompt + completion, right-padded with 0
    response_mask: torch.Tensor  # (N, L) 1 where the target is a completion token
    rollout_logprobs: torch.Tensor  # (N, L) the engine's log-probs of the completion tokens
    prompt_index: torch.Tensor  # (N,) which prompt of the batch
    rewards: torch.Tensor | None = None  # (N,)
    advantages: torch.Tensor | None = None  # (N, L)
    old_logprobs: torch.Tensor | None = None  # (N, L) the trainer's, before this batch's updates
    ref_logprobs: torch.Tensor | None = None  # (N, L) the frozen reference's
    old_values: torch.Tensor | None = None  # (N, L) a critic's, before the updates
    returns: torch.Tensor | None = None  # (N, L) value targets
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # a method's own per-sample tensors (N, ...)

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _tensors(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "extras" and getattr(self, f.name) is not None]

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        extras = {name: value[rows] for name, value in self.extras.items()}
        return replace(self, **{name: getattr(self, name)[rows] for name in self._tensors()}, extras=extras)

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> Iterator[RolloutBatch]:
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size].to(self.input_ids.device))

    def to(self, device: Any) -> RolloutBatch:
        extras = {name: value.to(device) for name, value in self.extras.items()}
        return replace(self, **{name: getattr(self, name).to(device) for name in self._tensors()}, extras=extras)


@dataclass
class Round:
    """What one training step trains: the prompts whose groups completed, their completions laid out for the
    trainer (``batch.prompt_index`` indexes ``problems``) and decoded, and where those prompts stood in the
    launched list (``kept``, ascending). Positions, not prompts, say which launched prompts completed: one launch
    may hold the same prompt twice (an epoch's tail topped up from the next), and only the occurrence that
    completed is done; a sampler queues the others."""

    problems: list[Any]
    batch: RolloutBatch
    texts: list[str]
    kept: list[int]
    rewards: RewardBatch | None = None  # scored already (queue scheduling), aligned with the batch's rows
    observations: list[str] | None = None  # multi-turn: what the environments wrote into each sample

    @classmethod
    def from_generation(cls, problems: Sequence[Any], result: GenerationResult, tokenizer: Any, device: Any) -> Round:
        """The round an engine's ``result`` trains, for the launched ``problems`` (each with ``prompt_ids``): the
        prompts it returned samples for, in launch order."""
        kept = sorted({s.prompt_index for s in result.samples})
        position = {p: i for i, p in enumerate(kept)}
        samples = [replace(s, prompt_index=position[s.prompt_index]) for s in result.samples]
        texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
        batch = assemble([problems[p]["prompt_ids"] for p in kept], samples, device)
        observed = any(s.mask is not None for s in samples)
        observations = [environment_text(s, tokenizer) for s in samples] if observed else None
        return cls([problems[p] for p in kept], batch, texts, kept, observations=observations)


def environment_text(sample: Sample, tokenizer: Any) -> str:
    """What the environments wrote into a multi-turn sample: its observation tokens (``mask`` 0), each observation
    decoded on its own; "" for a sample without observations. Text the policy wrote never appears here, whatever
    it imitates."""
    observations, current = [], []
    for token, policy in zip(sample.token_ids, sample.mask or [], strict=False):
        if not policy:
            current.append(token)
        elif current:
            observations.append(current)
            current = []
    observations += [current] if current else []
    return "".join(tokenizer.decode(ids, skip_special_tokens=True) for ids in observations)


def assemble(prompts: Sequence[Sequence[int]], samples: Sequence[Sample], device: Any = None) -> RolloutBatch:
    """Lay out ``samples`` (grouped by prompt, as the engines return them) for the trainer; a multi-turn sample's
    observation tokens (its ``mask``'s zeros) stay out of ``response_mask``."""
    sequences = [list(prompts[s.prompt_index]) + s.token_ids for s in samples]
    width = max(len(q) for q in sequences)
    input_ids = torch.zeros(len(samples), width, dtype=torch.long)
    mask = torch.zeros(len(samples), width - 1)
    rollout_logprobs = torch.zeros(len(samples), width - 1)
    for row, (sequence, sample) in enumerate(zip(sequences, samples, strict=True)):
        start = len(prompts[sample.prompt_index]) - 1  # target position of the first completion token
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        turns = getattr(sample, "mask", None)
        policy = torch.tensor(turns, dtype=mask.dtype) if turns is not None else 1
        mask[row, start : start + len(sample.token_ids)] = policy
        rollout_logprobs[row, start : start + len(sample.token_ids)] = torch.tensor(sample.logprobs)
    prompt_index = torch.tensor([s.prompt_index for s in samples])
    return RolloutBatch(input_ids, mask, rollout_logprobs, prompt_index).to(device or "cpu")


def token_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, L) of every target token under ``log softmax(logits / temperature)``, and optionally the
    entropy of that distribution at every position."""
    logits = model(input_ids[:, :-1]).float()
    if temperature not in (0, 1):
        logits = logits / temperature
    logprobs = torch.log_softmax(logits, -1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return logprobs, token_entropy(logits) if with_entropy else None
