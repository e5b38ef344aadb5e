"""The engine seam, written down: what every rollout engine is (:class:`Engine`) and what the request-level core
that queue scheduling and asynchronous rollout drive is (:class:`RequestCore`), with the results they return.

Engines: :class:`zoo.generation.native.NativeEngine` (zoo's models), :class:`zoo.generation.hf.HFEngine`
(transformers' ``generate``), :class:`zoo.generation.vllm.VLLMEngine` (vLLM). Each inherits :class:`Engine`, so the
rollout system finds an engine's abilities by its type (:class:`RequestLevelEngine` for the request-level
cores); a new engine implements these methods and nothing else.
Weights arrive under the policy's own (zoo) parameter names; an engine that keeps another naming renames them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from zoo.generation.sampling import SamplingParams

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


@dataclass
class Sample:
    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop token or string) or "length"; a multi-turn trajectory's own reasons
    mask: list[int] | None = None  # multi-turn: per token, 1 the policy's (trained on), 0 an observation's


@dataclass
class GenerationResult:
    samples: list[Sample]  # grouped by prompt, in prompt order, n per finished prompt
    unfinished_prompts: list[int] = field(default_factory=list)  # left out by an early stop
    decode_steps: int = 0
    generated_tokens: int = 0


@dataclass
class Request:
    id: Hashable
    prompt: list[int]
    params: SamplingParams
    seed: int = 0


@dataclass
class Finished:
    id: Hashable
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop token or string), "length" or "abort"


@runtime_checkable
class RequestCore(Protocol):
    """Continuous batching, one request at a time: requests wait, run in the core's rows and leave when finished.
    Each request (``Request``: id, prompt tokens, sampling params, seed) is sampled from its own seeded stream."""

    @property
    def busy(self) -> bool:
        """Whether any request waits or runs."""
        ...

    def submit(self, request: Request) -> None:
        """Queue ``request``; it joins the running rows at a later :meth:`step`."""
        ...

    def abort(self, request_id: Hashable) -> Finished | None:
        """Drop a request; a running one comes back with the tokens it has (``finish_reason`` "abort"); None when
        the core does not hold it."""
        ...

    def step(self) -> list[Finished]:
        """One decode step of every running request (admitting waiting ones first); the requests that finished."""
        ...


@runtime_checkable
class Engine(Protocol):
    """A rollout engine: batch generation of ``n`` completions per prompt, and the policy's weights loaded in."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> GenerationResult:
        """``n`` completions of every prompt, grouped by prompt in prompt order. ``finished_groups_quota``: stop
        once that many prompts are complete (the others come back in ``unfinished_prompts``); ``group_complete_at``:
        a prompt is complete with that many of its ``n`` finished. An engine that cannot stop early refuses both in
        one line (``ConfigError``)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the policy's weights (zoo parameter names) into the engine's copy."""
        ...


@runtime_checkable
class RequestLevelEngine(Engine, Protocol):
    """An engine that also hands out its request-level core (what queue scheduling, asynchronous rollout and agent
    rollouts drive): zoo's native engine and vLLM's. ``hf`` is batch-only."""

    def serving(self) -> AbstractContextManager[RequestLevelEngine]:
        """A context in which the engine generates (e.g. the model in eval mode), restored after."""
        ...

    def core(self, max_running: int, max_length: int, max_new_tokens: int) -> RequestCore:
        """A core of ``max_running`` rows of ``max_length`` tokens (prompt and completion), completions of at most
        ``max_new_tokens``."""
        ...
