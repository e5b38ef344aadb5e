"""Rollout data: completions sampled for a batch of prompts, laid out for the trainer.

Each of the N = prompts × G sequences is ``prompt + completion``, right-padded to a common length L + 1.
Everything per token lives in *target* positions (L of them): position t holds the token at t + 1 and the
log-probs of predicting it, so ``response_mask`` marks the completion's tokens there.

Micro-batches (:meth:`RolloutBatch.micro_batches`): the rows of a batch grouped so that each forward holds at most
``size`` rows and ``tokens`` tokens (rows x the group's longest row; rows are grouped longest first, so rows of like
length share a group), each trimmed to its own longest row; with padding-free forwards (:mod:`zoo.rl.packing`) a
micro-batch's tokens are its packed rows' (several short rows to one). :meth:`RolloutBatch.map_micro_batches` runs
a forward without gradients micro-batch by micro-batch and lays the results out as the whole batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from zoo.errors import ConfigError
from zoo.generation.engine import GenerationResult, Sample
from zoo.models.interface import HeadOverHiddenStates
from zoo.rl.losses import Totals, token_entropy
from zoo.rl.packing import FirstFit, PackedRows
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
    totals: dict[str, Totals] | None = None  # a minibatch's loss denominators, kept by its micro-batches

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _tensors(self) -> list[str]:
        kept = (f.name for f in fields(self) if f.name not in ("extras", "totals"))
        return [name for name in kept if getattr(self, name) is not None]

    def total(self, key: str = "response") -> Totals | None:
        """The denominators of the terms ``key`` names (zoo.rl.losses): the minibatch's when this is a micro-batch
        of it, else None (the batch's own)."""
        return None if self.totals is None else self.totals[key]

    def lengths(self) -> torch.Tensor:
        """Each row's tokens up to its last completion token (what follows is padding to the trainer); at least 2."""
        positions = torch.arange(1, self.response_mask.shape[1] + 1, device=self.response_mask.device)
        return ((self.response_mask > 0) * positions).amax(1).add(1).clamp(min=2)

    def micro_batches(
        self, size: int | None = None, tokens: int | None = None, packed: bool = False
    ) -> list[RolloutBatch]:
        """The batch in micro-batches of at most ``size`` rows and ``tokens`` tokens, each trimmed to its longest
        row (None, None: the whole batch, as it is). A micro-batch's tokens are those of its forward: its rows x its
        longest row, or with ``packed`` (padding-free forwards) its packed rows x its longest row, the rows filled
        first-fit longest first as :class:`zoo.rl.packing.PackedRows` fills them."""
        if size is None and tokens is None:
            return [self]
        return [self.trimmed(rows) for rows in self.micro_batch_rows(size, tokens, packed)]

    def micro_batch_rows(
        self, size: int | None = None, tokens: int | None = None, packed: bool = False
    ) -> list[torch.Tensor]:
        lengths = self.lengths().tolist()
        longest = max(lengths, default=0)
        if tokens is not None and longest > tokens:
            raise ConfigError(
                f"module.algorithm.micro_batch_tokens={tokens} is below the longest row of the batch ({longest} "
                "tokens: prompt + max_new_tokens): raise it"
            )
        groups, group, fill = [], [], None  # fill: the group's packed rows, as wide as its first (longest) row
        for row in sorted(range(len(self)), key=lambda r: -lengths[r]):
            n = lengths[row]
            fill = fill or FirstFit(n)
            forward_rows = len(fill.rows) + (fill.row_for(n) is None) if packed else len(group) + 1
            over_size = size is not None and len(group) == size
            over_tokens = tokens is not None and forward_rows * fill.width > tokens
            if group and (over_size or over_tokens):
                groups.append(group)
                group, fill = [], FirstFit(n)
            group.append(row)
            if packed:
                fill.add(row, n)
        groups += [group] if group else []
        return [torch.tensor(g, device=self.input_ids.device) for g in groups]

    def trimmed(self, rows: torch.Tensor) -> RolloutBatch:
        """Rows ``rows`` without the padding columns past their longest row."""
        part = self.select(rows)
        width = int(part.lengths().max()) if len(part) else 2
        L = self.response_mask.shape[1]

        def narrow(t: torch.Tensor) -> torch.Tensor:
            return t[..., : width - 1] if t.ndim >= 2 and t.shape[-1] == L else t

        tensors = {name: narrow(getattr(part, name)) for name in part._tensors() if name != "input_ids"}
        extras = {name: narrow(value) for name, value in part.extras.items()}
        return replace(part, input_ids=part.input_ids[:, :width], **tensors, extras=extras)

    def map_micro_batches(
        self,
        forward: Callable[[RolloutBatch], torch.Tensor],
        size: int | None = None,
        tokens: int | None = None,
        packed: bool = False,
    ) -> torch.Tensor:
        """``forward`` (a micro-batch → a tensor (n, ..., its width)) over the micro-batches
        (:meth:`micro_batches`), laid out as the whole batch's (N, ..., L), zero past each micro-batch's width."""
        if size is None and tokens is None:
            return forward(self)
        out = None
        L = self.response_mask.shape[1]
        for rows in self.micro_batch_rows(size, tokens, packed):
            part = forward(self.trimmed(rows))
            if out is None:
                out = part.new_zeros((len(self), *part.shape[1:-1], L))
            out[rows, ..., : part.shape[-1]] = part
        return out

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


LOGITS_PER_CHUNK = 1 << 24  # fp32 logits held at once by token_logprobs (64 MiB)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    lengths: torch.Tensor | None = None,
    outputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, L) of every target token under ``log softmax(logits / temperature)``, and optionally the
    entropy of that distribution at every position (computed only when asked for).

    A model whose logits are its head over its hidden states (:class:`zoo.models.interface.HeadOverHiddenStates`:
    zoo's own) never holds the (N, L, V) logits: the head runs over ``LOGITS_PER_CHUNK // V`` tokens at a time
    (logits in the head's dtype, log-softmax in fp32), and with gradients each chunk's logits are recomputed in the
    backward pass instead of kept (activation checkpointing of the head: one more head matmul per token). Other
    models (``arch: hf``) go through their full logits.

    With ``lengths`` (N,) the forward is padding-free (:class:`zoo.rl.packing.PackedRows`): each row's first
    ``lengths[i]`` tokens, packed; the positions past a row's length come back 0. ``outputs``: the model's
    :func:`position_outputs` over ``input_ids[:, :-1]``, computed already (by a forward that did more, e.g. showed
    attention maps)."""
    targets = input_ids[:, 1:]
    takes_head = isinstance(model, HeadOverHiddenStates)
    forward = position_outputs(model)
    if outputs is not None:
        states, flat_targets = outputs.flatten(0, 1), targets.reshape(-1)
    elif lengths is None:
        states, flat_targets = forward(input_ids[:, :-1]).flatten(0, 1), targets.reshape(-1)
    else:
        packed = PackedRows.of(input_ids, lengths)
        states = packed.gather(forward(packed.input_ids, position_ids=packed.position_ids,
                                       segment_ids=packed.segment_ids))  # fmt: skip
        flat_targets = packed.targets(input_ids)
    head = partial(_head_logprobs, model.logits if takes_head else _identity, temperature, with_entropy)
    chunk = max(1, LOGITS_PER_CHUNK // model.config.vocab_size) if takes_head else len(states)
    recompute = takes_head and torch.is_grad_enabled() and states.requires_grad
    parts = []
    for start in range(0, len(states), chunk):
        span = (states[start : start + chunk], flat_targets[start : start + chunk])
        parts.append(checkpoint(head, *span, use_reentrant=False) if recompute else head(*span))
    logprobs = torch.cat([lp for lp, _ in parts])
    entropy = torch.cat([h for _, h in parts]) if with_entropy else None
    if lengths is None:
        return logprobs.view(targets.shape), entropy.view(targets.shape) if with_entropy else None
    layout = partial(packed.scatter, rows=targets.shape[0], width=targets.shape[1])
    return layout(logprobs), layout(entropy) if with_entropy else None


def position_outputs(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """What :func:`token_logprobs` runs a model for at each position: its hidden states when its logits are its head
    over them (:class:`zoo.models.interface.HeadOverHiddenStates`; the head then runs a chunk of tokens at a time),
    else its logits."""
    return model.hidden_states if isinstance(model, HeadOverHiddenStates) else model


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _head_logprobs(head, temperature: float, with_entropy: bool, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden).float()
    if temperature not in (0, 1):
        logits = logits / temperature
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    return logprobs, token_entropy(logits) if with_entropy else None
