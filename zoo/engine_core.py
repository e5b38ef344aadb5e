"""WIP (issue 13): the request-level core of the native engine, with continuous batching (eager path only).

``EngineCore(model, params, max_running, max_length)`` keeps a pool of ``max_running`` rows, each with its own KV
cache columns, write column, position and random stream:

- ``submit(Request)`` queues a request (prompt tokens, an id, a seed); ``abort(id)`` drops it, queued or running;
- ``step()`` admits queued requests into free rows (one prefill for all of them, identical prompts prefilled once,
  their keys and values copied into columns 0 .. len - 1 of their rows), samples one token for every running
  row, retires the rows that finished (a stop token, a stop string, ``max_new_tokens``) and returns them, and runs
  one decode step for the rest. A retired row's place is taken at the next step by a queued request;
- occupied rows stay contiguous (a retired row is replaced by the last occupied one), so a decode step computes
  only the rows in use and attends only to the columns in use.

A request's tokens depend on its prompt, its seed and the weights only: not on which requests share its steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.decode_graphs import decode_step
from zoo.generation import SamplingParams, hits_stop_string, row_uniforms, sample_tokens


@dataclass
class Request:
    id: Hashable
    prompt: list[int]
    seed: int


@dataclass
class Finished:
    id: Hashable
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop", "length" or "abort"


@dataclass
class _Running:
    request: Request
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class RowKVCache:
    """The pool's keys and values (entries, rows, H, L, D) of the first ``rows`` rows, each written at its own
    column; attention reads columns ``[:width]``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, columns: torch.Tensor, width: int) -> None:
        self.keys, self.values, self.columns, self.width = keys, values, columns, width
        self.rows = torch.arange(len(columns), device=columns.device)

    def update(self, entry: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[entry][self.rows, :, self.columns] = k[:, :, 0]
        self.values[entry][self.rows, :, self.columns] = v[:, :, 0]
        return self.keys[entry][:, :, : self.width], self.values[entry][:, :, : self.width]


class EngineCore:
    def __init__(
        self, model: nn.Module, params: SamplingParams, max_running: int, max_length: int, tokenizer=None
    ) -> None:
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.max_running, self.max_length = max_running, max_length
        device, c = model.embed.weight.device, model.config
        shape = (model.num_attention_calls, max_running, c.num_attention_heads, max_length, c.head_dim)
        self.keys = torch.zeros(shape, dtype=model.embed.weight.dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.valid = torch.zeros(max_running, max_length, dtype=torch.bool, device=device)
        self.columns = torch.zeros(max_running, dtype=torch.long, device=device)
        self.seeds = torch.zeros(max_running, dtype=torch.long, device=device)
        self.counts = torch.zeros(max_running, dtype=torch.long, device=device)  # tokens sampled per row
        self.logits: torch.Tensor | None = None  # (running, V): what the next token of each row is drawn from
        self.stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=device)
        self.waiting: deque[Request] = deque()
        self.running: list[_Running] = []  # row i of the pool holds running[i]
        self.decode_steps = 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, request: Request) -> None:
        if len(request.prompt) + self.params.max_new_tokens > self.max_length:
            raise ValueError(f"request {request.id!r}: prompt + max_new_tokens exceed max_length {self.max_length}")
        self.waiting.append(request)

    @torch.inference_mode()
    def abort(self, request_id: Hashable) -> Finished | None:
        """Drop a request; a running one comes back with the tokens it has (finish reason ``abort``)."""
        for queued in self.waiting:
            if queued.id == request_id:
                self.waiting.remove(queued)
                return Finished(request_id, [], [], "abort")
        for row, running in enumerate(self.running):
            if running.request.id == request_id:
                self._retire([row])
                return Finished(request_id, running.tokens, running.logprobs, "abort")
        return None

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        self._admit()
        if not self.running:
            return []
        rows = len(self.running)
        uniforms = row_uniforms(self.seeds[:rows], self.counts[:rows])
        self.counts[:rows] += 1
        tokens, logprobs = sample_tokens(self.logits, self.params, uniforms)
        finished, done_rows = [], []
        stopped = torch.isin(tokens, self.stop_ids).tolist()
        for row, (running, token, logprob, stop) in enumerate(
            zip(self.running, tokens.tolist(), logprobs.tolist(), stopped, strict=True)
        ):
            running.tokens.append(token)
            running.logprobs.append(logprob)
            if not stop and self.params.stop_strings:
                stop = hits_stop_string(self.tokenizer, running.tokens, self.params.stop_strings)
            if stop or len(running.tokens) >= self.params.max_new_tokens:
                reason = "stop" if stop else "length"
                finished.append(Finished(running.request.id, running.tokens, running.logprobs, reason))
                done_rows.append(row)
        sources = self._retire(done_rows)
        if self.running:
            self._decode(tokens[sources] if done_rows else tokens)
        return finished

    # -- internals --------------------------------------------------------------------------------------
    def _admit(self) -> None:
        free = self.max_running - len(self.running)
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        if not admitted:
            return
        model, device = self.model, self.keys.device
        unique = list(dict.fromkeys(tuple(r.prompt) for r in admitted))  # identical prompts: one prefill
        width = max(len(p) for p in unique)
        ids = torch.zeros(len(unique), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(unique), width, dtype=torch.long, device=device)
        for i, prompt in enumerate(unique):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[i, width - len(prompt) :] = 1
        cache = model.new_cache(len(unique), width, device=device)
        padded = bool((mask == 0).any())
        hidden = model.hidden_states(
            ids,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            attention_mask=mask if padded else None,
            cache=cache,
        )
        logits = model.lm_head(hidden[:, -1])
        index = {p: i for i, p in enumerate(unique)}
        first = len(self.running)
        for offset, request in enumerate(admitted):
            row, i, length = first + offset, index[tuple(request.prompt)], len(request.prompt)
            self.keys[:, row, :, :length] = cache.keys[:, i, :, width - length :]
            self.values[:, row, :, :length] = cache.values[:, i, :, width - length :]
            self.valid[row] = False
            self.valid[row, :length] = True
            self.columns[row] = length
            self.seeds[row] = request.seed
            self.counts[row] = 0
            self.running.append(_Running(request))
        rows = torch.tensor([index[tuple(r.prompt)] for r in admitted], device=device)
        new = logits[rows]
        self.logits = new if self.logits is None or first == 0 else torch.cat([self.logits[:first], new])

    def _retire(self, rows: list[int]) -> torch.Tensor:
        """Free ``rows``: the last occupied rows move into the holes, so occupied rows stay contiguous. Returns
        the row each remaining row held before (to carry per-row tensors along)."""
        sources = list(range(len(self.running)))
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                for buffer in (self.keys, self.values):
                    buffer[:, row] = buffer[:, last]
                for buffer in (self.valid, self.columns, self.seeds, self.counts):
                    buffer[row] = buffer[last]
                self.running[row] = self.running[last]
                sources[row] = sources[last]
                if self.logits is not None:
                    self.logits[row] = self.logits[last]
            self.running.pop()
            sources.pop()
            if self.logits is not None:
                self.logits = self.logits[:last]
        return torch.tensor(sources, device=self.seeds.device)

    def _decode(self, tokens: torch.Tensor) -> None:
        rows = len(self.running)
        columns = self.columns[:rows]
        self.valid[torch.arange(rows, device=columns.device), columns] = True
        width = max(len(r.request.prompt) + len(r.tokens) for r in self.running)  # the largest column + 1
        cache = RowKVCache(self.keys[:, :rows], self.values[:, :rows], columns, width)
        valid = self.valid[:rows, :width]
        self.logits = decode_step(self.model, tokens[:, None], columns[:, None], valid, cache)
        self.columns[:rows] += 1
        self.decode_steps += 1
