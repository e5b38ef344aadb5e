"""zoo's own batched decoder, the default (``native``) rollout engine: every zoo model, CPU and GPU.

``NativeEngine.generate(prompts, n, params)`` samples ``n`` completions of every prompt:

- each prompt is prefilled once, then its KV cache is copied to its ``n`` rows (left padding, attention mask
  and position ids keep rows of different prompt lengths exact);
- decoding samples with temperature, top-k and top-p (temperature 0 is greedy); every row (one completion of
  one prompt) draws from its own random stream, a hash of its seed and the step (:func:`row_uniforms`), so its
  tokens never depend on which other rows share the batch or when they finish; the rows' seeds follow from
  ``params.seed`` and the row's place (prompt, sample), so a seeded call is reproducible;
- a row finishes on a stop token (kept in the output), a stop string (checked on the decoded tail) or
  ``max_new_tokens``; finished rows leave the batch and their cache rows are dropped, so no decode step is
  spent on them;
- a prompt is complete once ``group_complete_at`` of its ``n`` completions (default all) have finished; its
  other rows are aborted then. With ``finished_groups_quota`` it stops as soon as that many prompts are
  complete and returns the others as unfinished (what tail batching needs): the first ``quota`` to complete,
  each with its first ``group_complete_at`` finished completions, in prompt and sample order.

Per-token log-probs are ``log softmax(logits / temperature)`` of the sampled token (of the raw logits when
greedy), before top-k / top-p truncation: the same quantity a trainer computes from its own forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Sample:
    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop token or string) or "length"


@dataclass
class GenerationResult:
    samples: list[Sample]  # grouped by prompt, in prompt order, n per finished prompt
    unfinished_prompts: list[int] = field(default_factory=list)  # left out by an early stop
    decode_steps: int = 0
    generated_tokens: int = 0


# SplitMix64 (Steele, Lea and Flood 2014) on int64 tensors: multiplications wrap modulo 2**64 as the hash wants.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def row_seeds(seed: int | None, rows: int, device=None) -> torch.Tensor:
    """The seeds (rows,) of rows 0 .. rows - 1 of a call seeded with ``seed`` (None: a fresh draw from torch's
    global random state)."""
    if seed is None:
        seed = int(torch.randint(0, 1 << 62, (1,)))
    index = torch.arange(rows, dtype=torch.long, device=device)
    return splitmix64(splitmix64(torch.full_like(index, seed)) + index * _GOLDEN)


def _int64(value: int) -> int:
    """``value`` modulo 2**64, as a signed 64-bit integer."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


def row_uniforms(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Uniform draws in [0, 1) (rows,) of each row's stream at ``step`` (one for all rows, or one per row): 24
    bits of a hash of (seed, step)."""
    offset = _int64((step + 1) * _GOLDEN) if isinstance(step, int) else (step + 1) * _GOLDEN
    return _shift_right(splitmix64(seeds + offset), 40).float() * 2.0**-24


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (n,) and their log-probs (n,) from last-position logits (n, V), drawn with ``uniforms`` (n,)
    in [0, 1) (:func:`row_uniforms`; None: from torch's global random state)."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    scaled = logits / params.temperature
    logprobs = torch.log_softmax(scaled, -1)
    if params.top_k:
        kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scaled, descending=True, dim=-1)
        probs = torch.softmax(ordered, -1)
        outside = probs.cumsum(-1) - probs > params.top_p  # keep the smallest prefix whose mass reaches top_p
        scaled = scaled.scatter(1, order, ordered.masked_fill(outside, float("-inf")))
    # inverse-CDF sampling: one uniform draw per row (torch.multinomial draws one per vocabulary entry)
    cdf = torch.softmax(scaled, -1).cumsum(-1)
    if uniforms is None:
        uniforms = torch.rand(cdf.shape[0], device=cdf.device)
    uniform = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, uniform).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)


class _EagerBatch:
    """The rows being decoded, with an exact KV cache: finished rows leave it at once (CPU, or no graphs).
    :meth:`launch` only records the tokens; :meth:`logits` runs the step on the rows still active."""

    def __init__(self, model, cache, mask, positions, logits, padded: bool, dtype) -> None:
        self.model, self.cache, self.mask, self.positions = model, cache, mask, positions
        self.padded, self.dtype = padded, dtype
        self.pending, self.tokens = logits, None

    def launch(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def keep(self, index: torch.Tensor) -> None:
        self.cache.select(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.tokens is not None:
            self.tokens = self.tokens[index]
        else:
            self.pending = self.pending[index]

    def logits(self) -> torch.Tensor:
        if self.tokens is None:
            return self.pending
        if self.padded:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        device = self.tokens.device
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
            hidden = self.model.hidden_states(
                self.tokens[:, None],
                position_ids=self.positions[:, None],
                attention_mask=self.mask if self.padded else None,
                cache=self.cache,
            )
            logits = self.model.lm_head(hidden[:, -1])
        self.positions = self.positions + 1
        self.tokens = None
        return logits


RUNNING, STOPPED, AT_LENGTH = 0, 1, 2  # per-row codes of a decode step


class _HostCopy:
    """A decode step's per-row codes on their way to the CPU. On a GPU the copy goes to pinned memory behind an
    event, so waiting for it does not wait for decode work queued after it."""

    def __init__(self, buffer: torch.Tensor | None, codes: torch.Tensor) -> None:
        self.codes, self.event = codes, None
        if buffer is not None:
            self.host = buffer[: len(codes)]
            self.host.copy_(codes, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def list(self) -> list[int]:
        if self.event is None:
            return self.codes.tolist()
        self.event.synchronize()
        return self.host.tolist()


class NativeEngine:
    """Generates with a zoo model in this process. ``load_weights`` copies new weights into it.

    ``decode``: ``auto`` (CUDA graphs on a GPU, the exact eager loop elsewhere), ``eager``, ``graphs``, or
    ``static`` (the graphs' static-buffer steps run uncaptured: the graph path's logic on any device).
    """

    DECODE_MODES = ("auto", "eager", "graphs", "static")

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        dtype: torch.dtype | None = None,
        decode: str = "auto",
    ) -> None:
        if decode not in self.DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(self.DECODE_MODES)}, got {decode!r}")
        self.model, self.tokenizer, self.dtype, self.decode = model, tokenizer, dtype, decode
        self._graphs = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)  # in place: captured decode graphs keep reading the same memory

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> GenerationResult:
        model, device = self.model, self.device
        complete_at = group_complete_at or n
        if not 1 <= complete_at <= n:
            raise ValueError(f"group_complete_at={group_complete_at} must lie in [1, n={n}]")
        was_training = model.training
        model.eval()
        try:
            graphed = self.decode in ("graphs", "static") or (self.decode == "auto" and device.type == "cuda")
            if graphed or self.dtype is not None:  # WIP: the request-level core serves the eager fp path only
                return self._generate(model, device, prompts, n, params, finished_groups_quota, complete_at)
            return self._generate_requests(model, prompts, n, params, finished_groups_quota, complete_at)
        finally:
            model.train(was_training)

    def _generate_requests(self, model, prompts, n, params, quota, complete_at) -> GenerationResult:
        """The batch API over :class:`zoo.engine_core.EngineCore`: n requests per prompt (request p * n + j is
        sample j of prompt p, seeded as row p * n + j), each group's surplus aborted once ``complete_at`` of them
        finished, everything aborted once ``quota`` groups are complete."""
        from zoo.engine_core import EngineCore, Finished, Request

        width = max(len(p) for p in prompts)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if positions is not None and width + params.max_new_tokens - 1 > positions:
            raise ConfigError(
                f"a prompt of {width} tokens plus max_new_tokens={params.max_new_tokens} exceeds the model's "
                f"max_position_embeddings={positions}"
            )
        total = len(prompts) * n
        core = EngineCore(model, params, total, width + params.max_new_tokens, self.tokenizer)
        seeds = row_seeds(params.seed, total, self.device).tolist()
        for p, prompt in enumerate(prompts):
            for j in range(n):
                core.submit(Request(p * n + j, list(prompt), seeds[p * n + j]))
        done: dict[int, Finished] = {}
        finished_of: list[list[int]] = [[] for _ in prompts]
        complete: list[int] = []
        steps = 0
        while core.busy and not (quota is not None and len(complete) >= quota):
            steps += 1
            for result in sorted(core.step(), key=lambda f: f.id):
                done[result.id] = result
                p = result.id // n
                if len(finished_of[p]) < complete_at:
                    finished_of[p].append(result.id)
                    if len(finished_of[p]) == complete_at:
                        complete.append(p)
                        for other in range(p * n, p * n + n):
                            if other not in done and (aborted := core.abort(other)) is not None:
                                done[other] = aborted
        for request in range(total):  # what an early stop left running or queued
            if request not in done and (aborted := core.abort(request)) is not None:
                done[request] = aborted
        returned = sorted(complete[:quota] if quota is not None else complete)
        samples = [
            Sample(p, done[r].token_ids, done[r].logprobs, done[r].finish_reason)
            for p in returned
            for r in sorted(finished_of[p])
        ]
        unfinished = sorted(set(range(len(prompts))) - set(returned))
        return GenerationResult(samples, unfinished, steps, sum(len(f.token_ids) for f in done.values()))

    def _prefill(self, model, device, prompts, n, params):
        """Every prompt's prefill, copied to its n rows: (the batch being decoded, the rows' prompts)."""
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = int(lengths.max())
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if positions is not None and width + params.max_new_tokens - 1 > positions:
            raise ConfigError(
                f"a prompt of {width} tokens plus max_new_tokens={params.max_new_tokens} exceeds the model's "
                f"max_position_embeddings={positions}"
            )
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for i, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[i, width - len(prompt) :] = 1
        graphed = self.decode in ("graphs", "static") or (self.decode == "auto" and device.type == "cuda")
        total = width + params.max_new_tokens
        cache = model.new_cache(len(prompts), width if graphed else total, dtype=self.dtype, device=device)
        padded = bool((lengths != width).any())  # without padding, plain causal attention needs no mask
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
            hidden = model.hidden_states(
                ids,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                attention_mask=mask if padded else None,
                cache=cache,
            )
            logits = model.lm_head(hidden[:, -1])
        rows = torch.arange(len(prompts), device=device).repeat_interleave(n)
        cache.select(rows)
        logits, mask, positions = logits[rows], mask[rows], lengths[rows]
        if not graphed:
            return _EagerBatch(model, cache, mask, positions, logits, padded, self.dtype), rows.tolist()
        from zoo.decode_graphs import GraphDecoder, GraphedBatch

        if self._graphs is None:
            capture = self.decode != "static"
            self._graphs = GraphDecoder(model, self.dtype or model.embed.weight.dtype, capture)
        return GraphedBatch(self._graphs, cache, mask, positions, logits, total), rows.tolist()

    def _generate(self, model, device, prompts, n, params, quota, complete_at) -> GenerationResult:
        batch, owner = self._prefill(model, device, prompts, n, params)  # owner: prompt of each row
        seeds = row_seeds(params.seed, len(owner), device)  # row p * n + j: sample j of prompt p
        rows, budget = len(owner), params.max_new_tokens
        # every active row has generated the same number of tokens, so step t writes column t of these
        tokens_out = torch.zeros(rows, budget, dtype=torch.long, device=device)
        logprobs_out = torch.zeros(rows, budget, dtype=torch.float32, device=device)
        stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=device)
        pinned = torch.empty(rows, dtype=torch.int8, pin_memory=True) if device.type == "cuda" else None
        active = list(range(rows))  # sample index of each active row
        active_index = torch.arange(rows, device=device)
        lengths = [budget] * rows
        reasons: list[str | None] = [None] * rows
        finished_of: list[list[int]] = [[] for _ in prompts]  # each prompt's finished samples, in finishing order
        done_prompts: list[int] = []  # prompts with ``complete_at`` finished samples, in completion order
        steps = 0
        while active:
            tokens, logprobs = sample_tokens(batch.logits(), params, row_uniforms(seeds[active_index], steps))
            tokens_out[active_index, steps] = tokens
            logprobs_out[active_index, steps] = logprobs.float()
            codes = torch.isin(tokens, stop_ids).to(torch.int8)
            if steps + 1 >= budget:
                codes = torch.where(codes == STOPPED, codes, torch.full_like(codes, AT_LENGTH))
            host = _HostCopy(pinned, codes)
            if steps + 1 < budget:
                batch.launch(tokens)  # the next step, for every row still active (graphs: it starts now)
            row_codes = host.list()
            if params.stop_strings:
                texts = tokens_out[active_index, : steps + 1].tolist()
                row_codes = [
                    STOPPED if c != STOPPED and hits_stop_string(self.tokenizer, t, params.stop_strings) else c
                    for c, t in zip(row_codes, texts, strict=True)
                ]
            steps += 1
            completed = set()
            for sample, code in zip(active, row_codes, strict=True):
                if code == RUNNING:
                    continue
                lengths[sample], reasons[sample] = steps, "stop" if code == STOPPED else "length"
                prompt = owner[sample]
                if len(finished_of[prompt]) < complete_at:
                    finished_of[prompt].append(sample)
                    if len(finished_of[prompt]) == complete_at:
                        done_prompts.append(prompt)
                        completed.add(prompt)
            if quota is not None and len(done_prompts) >= quota:
                break
            # finished rows leave, and so do the surplus rows of prompts that just completed (aborted)
            keep = [r for r, s in enumerate(active) if reasons[s] is None and owner[s] not in completed]
            for s in active:
                if reasons[s] is None and owner[s] in completed:
                    lengths[s] = steps  # aborted here
            if len(keep) < len(active):
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                batch.keep(index)
                active_index = active_index[index]
                active = [active[r] for r in keep]

        for sample in active:  # rows still running at an early stop
            lengths[sample] = steps
        returned = sorted(done_prompts[:quota] if quota is not None else done_prompts)
        chosen = [s for p in returned for s in sorted(finished_of[p])]
        token_lists = tokens_out[chosen].tolist() if chosen else []
        logprob_lists = logprobs_out[chosen].tolist() if chosen else []
        samples = [
            Sample(owner[s], token_lists[i][: lengths[s]], logprob_lists[i][: lengths[s]], reasons[s])
            for i, s in enumerate(chosen)
        ]
        unfinished = sorted(set(range(len(prompts))) - set(returned))
        return GenerationResult(samples, unfinished, steps, sum(lengths))


def hits_stop_string(tokenizer, tokens: list[int], stop_strings: tuple[str, ...]) -> bool:
    """Whether the decoded tail of ``tokens`` contains one of ``stop_strings``."""
    if not stop_strings:
        return False
    if tokenizer is None:
        raise ValueError("stop strings need the engine's tokenizer")
    tail = tokenizer.decode(tokens[-max(len(s) for s in stop_strings) - 2 :])
    return any(s in tail for s in stop_strings)


def finish(tokenizer, tokens: Sequence[int], params: SamplingParams) -> tuple[int, str]:
    """Where a completion ends under ``params``' stop rules, and why: (number of tokens kept, finish reason).
    For engines that generate past a row's end (padding it), to cut their output the native engine's way."""
    stop_tokens = set(params.stop_token_ids)
    for i, token in enumerate(tokens):
        if token in stop_tokens or hits_stop_string(tokenizer, list(tokens[: i + 1]), params.stop_strings):
            return i + 1, "stop"
    return min(len(tokens), params.max_new_tokens), "length"
