"""The native engine's core: request-level generation with continuous batching, on CPU and GPU.

``EngineCore`` decodes from a :class:`RowPool`: ``max_running`` sequence rows, each with its own KV cache columns,
write column, random stream and output buffer.

- ``submit(Request)`` queues a request (id, prompt tokens, sampling params, seed); ``abort(id)`` drops it, queued
  or running, and returns what it had generated (finish reason ``abort``);
- ``step()`` admits queued requests into free rows, samples one token for every running row, returns the
  requests that finished (a stop token, a stop string, their ``max_new_tokens``) and runs one decode step for
  the rest. A finished or aborted row is free at once; the next ``step()`` refills it with a queued request.

Admission runs **in a step of its own** before the step's sampling: one prefill of the admitted prompts
(identical prompts prefilled once, so a prompt's n replicas cost one prefill), left-padded, whose keys and
values are copied into columns ``0 .. len - 1`` of the new rows. Decoding then treats old and new rows alike.
While requests run, admission waits until ``admit_batch`` rows (default an eighth of the pool) are free, so one
prefill serves several refills. (Chunked prefill inside the decode batch would hide a prefill behind decoding;
measured on the CPU settings of ``bench/queue_scheduling.py``, admissions take 10-11% of the engine's time, so
the simpler choice stands.)

Occupied rows stay contiguous (a freed row is filled by the last occupied one), so a step computes only the
rows in use. Two ways to run a decode step (``decode``):

- ``eager``: the step runs on the occupied rows, attending to the columns in use (CPU, or no graphs);
- ``graphs``: the step is captured as a CUDA graph per row *bucket* (powers of two up to ``max_running``) over
  static pool buffers, and replayed: at rollout batch sizes launching a step's few hundred kernels from Python
  costs more than running them. Attention reads all columns, masked. The replay is launched before the host
  learns which rows finished (their step is wasted), so the host's bookkeeping overlaps the GPU's work.
  ``static`` runs the same static-buffer steps uncaptured: the graph path's logic on any device.

A request's tokens depend on its prompt, its params, its seed and the weights only, not on which requests share
its steps: every row draws from its own random stream (``zoo.generation.sampling.row_uniforms``) and attends only to its
own columns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.generation.engine import Finished, Request, RequestCore
from zoo.generation.sampling import SamplingParams, hits_stop_string, row_uniforms, sample_tokens

COLUMN_MULTIPLE = 64  # graphed pools round their length up to this
DECODE_MODES = ("eager", "graphs", "static")


def bucket_for(rows: int, limit: int) -> int:
    return min(1 << max(rows - 1, 0).bit_length(), limit)


class RowKVCache:
    """Keys and values (entries, B, H, L, D) of the pool's first B rows; row i writes its new token at
    ``columns[i]`` (``column``: the same for every row, when the host knows it); attention reads columns
    ``[:width]``. The write's flat indices are computed once per step."""

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, columns: torch.Tensor, width: int, column: int | None = None
    ) -> None:
        self.keys, self.values, self.width, self.column = keys, values, width, column
        _, rows, heads, length, self.head_dim = keys.shape
        if column is None:
            starts = torch.arange(rows * heads, device=columns.device).view(rows, heads) * length
            self.index = (starts + columns[:, None]).view(-1)  # (B * H,) rows of the (B * H * L, D) view

    def update(self, entry: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[entry], self.values[entry]  # (B, H, L, D), contiguous
        if self.column is not None:
            keys[:, :, self.column] = k[:, :, 0]
            values[:, :, self.column] = v[:, :, 0]
        else:
            keys.view(-1, self.head_dim).index_copy_(0, self.index, k.reshape(-1, self.head_dim).to(keys.dtype))
            values.view(-1, self.head_dim).index_copy_(0, self.index, v.reshape(-1, self.head_dim).to(values.dtype))
        return keys[:, :, : self.width], values[:, :, : self.width]


class _HostCopy:
    """A step's per-row stop flags on their way to the CPU. On a GPU the copy goes to pinned memory behind an
    event, so waiting for it does not wait for the decode step launched after it."""

    def __init__(self, flags: torch.Tensor, pinned: torch.Tensor | None) -> None:
        self.flags, self.event = flags, None
        if pinned is not None:
            self.host = pinned[: len(flags)]
            self.host.copy_(flags, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def list(self) -> list[bool]:
        if self.event is None:
            return self.flags.tolist()
        self.event.synchronize()
        return self.host.tolist()


class RowPool:
    """The static buffers of ``rows`` sequence rows of ``length`` columns, and the decode steps over them.

    Per row: keys and values, ``valid`` (which columns it attends to), ``columns`` (where its next token goes;
    its position id too: a row's prompt starts at column 0), the token to feed, the next-token ``logits``, its
    random stream's draws (computed at admission) and sampled-token count, and its generated tokens and log-probs
    so far. A :class:`RowPool` outlives the cores that use it, so the CUDA graphs captured over its buffers are
    reused from call to call.
    """

    def __init__(
        self, model: nn.Module, rows: int, length: int, dtype: torch.dtype | None, decode: str, max_new: int
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        self.model, self.rows, self.decode, self.max_new = model, rows, decode, max_new
        self.graphed = decode != "eager"
        if self.graphed:  # + 1: a step launched past a row's end still writes in bounds
            length = -(-(length + 1) // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
        self.length = length
        device = model.embed.weight.device
        self.dtype = dtype or model.embed.weight.dtype
        cache = model.new_cache(rows, length, dtype=self.dtype, device=device)
        self.keys, self.values = cache.keys, cache.values
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.columns = torch.zeros(rows, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.counts = torch.zeros(rows, dtype=torch.long, device=device)
        self.out_tokens = torch.zeros(rows, max_new, dtype=torch.long, device=device)
        self.out_logprobs = torch.zeros(rows, max_new, dtype=torch.float32, device=device)
        self.uniforms = torch.zeros(rows, max_new, dtype=torch.float32, device=device)  # each row's stream
        self.logits: torch.Tensor | None = None  # (rows, V), allocated at the first prefill
        self.pinned = torch.empty(rows, dtype=torch.bool, pin_memory=True) if device.type == "cuda" else None
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None) or length
        self.last_position = min(length, positions) - 1
        self.steps: dict[int, Callable[[], None]] = {}  # graphed decode step per bucket

    def fits(self, rows: int, length: int, dtype: torch.dtype | None, max_new: int) -> bool:
        """Whether a core of ``rows`` rows of ``length`` columns can run on this pool (a larger pool serves a
        smaller core: rounds of different sizes keep one pool and its CUDA graphs)."""
        return (
            self.rows >= rows
            and (self.dtype == (dtype or self.model.embed.weight.dtype))
            and self.max_new >= max_new
            and (self.length >= length + 1 if self.graphed else self.length >= length)
        )

    def autocast(self):
        device = self.keys.device.type
        return torch.autocast(device, dtype=self.dtype, enabled=self.dtype != self.model.embed.weight.dtype)

    def move(self, sources: torch.Tensor, targets: torch.Tensor, width: int) -> None:
        """Rows ``sources`` (their first ``width`` columns) take the places of rows ``targets``."""
        self.keys[:, targets, :, :width] = self.keys[:, sources, :, :width]
        self.values[:, targets, :, :width] = self.values[:, sources, :, :width]
        for buffer in (self.valid, self.columns, self.counts, self.out_tokens, self.out_logprobs, self.uniforms):
            buffer[targets] = buffer[sources]
        self.logits[targets] = self.logits[sources]

    def decode_eager(self, tokens: torch.Tensor, rows: int, width: int, aligned: bool) -> None:
        """Feed ``tokens`` (rows,) to the first ``rows`` rows, whose columns in use end before ``width``.
        ``aligned``: every row writes column ``width - 1`` (then every column before it is valid: no mask)."""
        columns = self.columns[:rows]
        self.valid[:rows].scatter_(1, columns[:, None], True)
        cache = RowKVCache(self.keys[:, :rows], self.values[:, :rows], columns, width, width - 1 if aligned else None)
        valid = None if aligned else self.valid[:rows, :width]
        with self.autocast():
            logits = self.model.decode_step(tokens[:, None], columns[:, None], valid, cache)
        self.logits[:rows] = logits
        self.columns[:rows] += 1

    def launch(self, tokens: torch.Tensor, rows: int) -> None:
        """Feed ``tokens`` (rows,) through the graphed step of the smallest bucket holding ``rows`` rows."""
        self.tokens[:rows, 0] = tokens
        bucket = bucket_for(rows, self.rows)
        if bucket not in self.steps:
            self.steps[bucket] = self._captured(bucket) if self.decode == "graphs" else self._static_step(bucket)
        self.steps[bucket]()

    def _static_step(self, bucket: int) -> Callable[[], None]:
        keys, values, valid = self.keys[:, :bucket], self.values[:, :bucket], self.valid[:bucket]
        columns, tokens, logits, model = self.columns[:bucket], self.tokens[:bucket], self.logits[:bucket], self.model
        last_column, last_position = self.length - 1, self.last_position

        def step() -> None:  # rows past the occupied ones are idle: clamped, so they stay in bounds
            write = columns.clamp(max=last_column)
            valid.scatter_(1, write[:, None], True)
            cache = RowKVCache(keys, values, write, self.length)
            with torch.no_grad(), self.autocast():
                positions = columns.clamp(max=last_position)[:, None]
                logits.copy_(model.decode_step(tokens, positions, valid, cache))
            columns.add_(1)

        return step

    def _captured(self, bucket: int) -> Callable[[], None]:
        step = self._static_step(bucket)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = (self.valid.clone(), self.columns.clone())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and workspaces outside the capture
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a trainer in another thread of the process (asynchronous rollout) may use the GPU meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            step()
        self.valid.copy_(saved[0])  # warm-up and capture ran the step: undo what they wrote
        self.columns.copy_(saved[1])
        return graph.replay


@dataclass
class _Running:
    request: Request
    count: int = 0  # tokens sampled


class EngineCore(RequestCore):
    """The request-level engine over the first ``rows`` rows of ``pool`` (default all); see the module docstring."""

    def __init__(self, pool: RowPool, tokenizer=None, rows: int | None = None, admit_batch: int | None = None) -> None:
        self.pool, self.tokenizer, self.rows = pool, tokenizer, rows or pool.rows
        if self.rows > pool.rows:
            raise ValueError(f"a core of {self.rows} rows on a pool of {pool.rows}")
        self.admit_batch = admit_batch or max(1, self.rows // 8)  # free rows that trigger an admission
        self.waiting: deque[Request] = deque()
        self.running: list[_Running] = []  # pool row i holds running[i]
        self.decode_steps = self.prefills = 0
        self.occupancy = 0.0  # sum over decode steps of running rows / rows
        device = pool.keys.device
        self._stop_ids = torch.zeros(0, dtype=torch.long, device=device)
        self._stop_set: frozenset[int] = frozenset()
        self._mixed_stops = False  # running requests with different stop tokens

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, request: Request) -> None:
        params = request.params
        if len(request.prompt) + params.max_new_tokens > self.pool.length:
            raise ValueError(f"request {request.id!r}: prompt + max_new_tokens exceed the pool's {self.pool.length}")
        if params.max_new_tokens > self.pool.max_new:
            raise ValueError(f"request {request.id!r}: max_new_tokens above the pool's {self.pool.max_new}")
        if not request.prompt:
            raise ValueError(f"request {request.id!r}: an empty prompt")
        self.waiting.append(request)

    @torch.inference_mode()
    def abort(self, request_id: Hashable) -> Finished | None:
        """Drop a request; a running one comes back with the tokens it has. None if it is not here."""
        for queued in self.waiting:
            if queued.id == request_id:
                self.waiting.remove(queued)
                return Finished(request_id, [], [], "abort")
        for row, running in enumerate(self.running):
            if running.request.id == request_id:
                (aborted,) = self._outputs([row], ["abort"])
                self._retire([row])
                return aborted
        return None

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        self._admit()
        if not self.running:
            return []
        pool, rows = self.pool, len(self.running)
        tokens, logprobs = self._sample(rows)
        counts = pool.counts[:rows]
        index = counts[:, None].clamp(max=pool.max_new - 1)
        pool.out_tokens[:rows].scatter_(1, index, tokens[:, None])
        pool.out_logprobs[:rows].scatter_(1, index, logprobs[:, None].float())
        counts += 1
        flags = _HostCopy(torch.isin(tokens, self._stop_ids), pool.pinned)
        if pool.graphed:
            pool.launch(tokens, rows)  # runs while the host reads the flags
        stopped = flags.list()
        done, reasons = [], []
        checking_strings = any(r.request.params.stop_strings for r in self.running)
        texts = pool.out_tokens[:rows].tolist() if checking_strings else None
        if self._mixed_stops and any(stopped):  # a flag says "some request's stop token": whose?
            hits = [row for row, s in enumerate(stopped) if s]
            for row, token in zip(hits, tokens[hits].tolist(), strict=True):
                stopped[row] = token in self.running[row].request.params.stop_token_ids
        for row, running in enumerate(self.running):
            running.count += 1
            params = running.request.params
            stop = stopped[row]
            if not stop and params.stop_strings:
                stop = hits_stop_string(self.tokenizer, texts[row][: running.count], params.stop_strings)
            if stop or running.count >= params.max_new_tokens:
                done.append(row)
                reasons.append("stop" if stop else "length")
        finished = self._outputs(done, reasons)
        sources = self._retire(done)
        self.decode_steps += 1
        self.occupancy += rows / self.rows
        if self.running and not pool.graphed:
            kept = tokens[sources] if done else tokens
            ends = {len(r.request.prompt) + r.count for r in self.running}
            pool.decode_eager(kept, len(self.running), max(ends), aligned=len(ends) == 1)
        return finished

    # -- internals --------------------------------------------------------------------------------------
    def _sample(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per running row, rows grouped by their sampling distribution (usually one group)."""
        pool = self.pool
        uniforms = pool.uniforms[:rows].gather(1, pool.counts[:rows, None]).squeeze(1)
        logits = pool.logits[:rows]
        kinds = [_distribution(r.request.params) for r in self.running]
        if all(k == kinds[0] for k in kinds):
            return sample_tokens(logits, self.running[0].request.params, uniforms)
        tokens = torch.zeros(rows, dtype=torch.long, device=logits.device)
        logprobs = torch.zeros(rows, dtype=torch.float32, device=logits.device)
        for kind in dict.fromkeys(kinds):
            members = [i for i, k in enumerate(kinds) if k == kind]
            index = torch.tensor(members, device=logits.device)
            params = self.running[members[0]].request.params
            tokens[index], logprobs[index] = sample_tokens(logits[index], params, uniforms[index])
        return tokens, logprobs

    def _admit(self) -> None:
        pool = self.pool
        free = self.rows - len(self.running)
        if free < min(self.admit_batch, len(self.waiting)) and self.running:
            return  # wait for a few rows to free up: one prefill for several requests
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        if not admitted:
            return
        model, device = pool.model, pool.keys.device
        unique = list(dict.fromkeys(tuple(r.prompt) for r in admitted))  # identical prompts: one prefill
        width = max(len(p) for p in unique)
        ids = torch.zeros(len(unique), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(unique), width, dtype=torch.long, device=device)
        for i, prompt in enumerate(unique):  # left padding: every prompt ends at the same column
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[i, width - len(prompt) :] = 1
        cache = model.new_cache(len(unique), width, dtype=pool.dtype, device=device)
        padded = bool((mask == 0).any())
        with pool.autocast():
            hidden = model.hidden_states(
                ids,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                attention_mask=mask if padded else None,
                cache=cache,
            )
            logits = model.lm_head(hidden[:, -1])
        if pool.logits is None:
            pool.logits = torch.zeros(pool.rows, logits.shape[-1], dtype=logits.dtype, device=device)
        which = {p: i for i, p in enumerate(unique)}
        first = len(self.running)
        sources = torch.tensor([which[tuple(r.prompt)] for r in admitted], device=device)
        new = slice(first, first + len(admitted))
        pool.logits[new] = logits[sources]
        pool.valid[new] = False
        pool.counts[new] = 0
        seeds = torch.tensor([r.seed for r in admitted], dtype=torch.long, device=device)
        steps = torch.arange(pool.max_new, device=device)
        pool.uniforms[new] = row_uniforms(seeds[:, None], steps[None, :])
        pool.columns[new] = torch.tensor([len(r.prompt) for r in admitted], device=device)
        by_length: dict[int, list[int]] = {}  # the new rows of each prompt length: one copy per length
        for offset, request in enumerate(admitted):
            by_length.setdefault(len(request.prompt), []).append(offset)
            self.running.append(_Running(request))
        for length, offsets in by_length.items():
            rows = torch.tensor([first + o for o in offsets], device=device)
            prefilled = sources[torch.tensor(offsets, device=device)]
            pool.keys[:, rows, :, :length] = cache.keys[:, prefilled, :, width - length :]
            pool.values[:, rows, :, :length] = cache.values[:, prefilled, :, width - length :]
            pool.valid[rows, :length] = True
        stop_sets = {frozenset(r.request.params.stop_token_ids) for r in self.running}
        self._mixed_stops = len(stop_sets) > 1
        stops = frozenset().union(*stop_sets)
        if stops != self._stop_set:
            self._stop_set = stops
            self._stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
        self.prefills += 1

    def _outputs(self, rows: list[int], reasons: list[str]) -> list[Finished]:
        if not rows:
            return []
        index = torch.tensor(rows, device=self.pool.keys.device)
        tokens, logprobs = self.pool.out_tokens[index].tolist(), self.pool.out_logprobs[index].tolist()
        out = []
        for i, (row, reason) in enumerate(zip(rows, reasons, strict=True)):
            running = self.running[row]
            n = running.count
            out.append(Finished(running.request.id, tokens[i][:n], logprobs[i][:n], reason))
        return out

    def _retire(self, rows: list[int]) -> torch.Tensor | None:
        """Free ``rows``: the last occupied rows move into the holes, so occupied rows stay contiguous. Returns
        the row each remaining row held before (to carry per-row tensors along), or None when none moved."""
        if not rows:
            return None
        sources = list(range(len(self.running)))
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                self.running[row] = self.running[last]
                sources[row] = sources[last]
            self.running.pop()
            sources.pop()
        targets = [row for row, source in enumerate(sources) if source != row]
        if targets:  # one gathered copy per buffer for every row that moved
            width = max(len(self.running[t].request.prompt) + self.running[t].count + 1 for t in targets)
            device = self.pool.keys.device
            self.pool.move(
                torch.tensor([sources[t] for t in targets], device=device),
                torch.tensor(targets, device=device),
                min(width, self.pool.length),
            )
        return torch.tensor(sources, dtype=torch.long, device=self.pool.keys.device)


def _distribution(params: SamplingParams) -> tuple[float, float, int]:
    return params.temperature, params.top_p, params.top_k
