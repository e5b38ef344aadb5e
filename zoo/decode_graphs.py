"""CUDA-graph decoding: the native engine's decode loop on a GPU.

At rollout batch sizes a decode step is a few hundred small kernels, and launching them from Python costs
more than running them. Here one decode step of a zoo model (embedding → blocks → head for one new token per
row) is captured as a CUDA graph and replayed at every step:

- the step reads and writes static buffers only: the next tokens, their positions, a KV cache whose write
  column is a tensor (:class:`SlotKVCache`) and a key-validity mask over the whole cache (left padding of the
  prompts, and the columns written so far), so one graph serves every position;
- graphs are captured per batch *bucket* (powers of two) and cache length (rounded up to 64 columns) and kept
  for later calls; weights are updated in place (``load_weights``), so a graph stays valid across syncs;
- finished rows stop counting at once (their tokens are ignored) and leave the batch physically when the live
  rows fit the next smaller bucket: then the live rows' cache moves to that bucket's buffers. At most half of
  a bucket's rows are ever idle.

Attention reads the whole preallocated cache every step (masked), as static-cache decoders do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.models.gpt_neox import AttentionInputs, KVCache

COLUMN_MULTIPLE = 64


def bucket_for(rows: int) -> int:
    return 1 << max(rows - 1, 0).bit_length()


class SlotKVCache:
    """Keys and values (entries, B, H, L, D) written at column ``slot`` (a one-element tensor)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor) -> None:
        self.keys, self.values, self.slot = keys, values, slot

    def update(self, entry: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[entry].index_copy_(2, self.slot, k)
        self.values[entry].index_copy_(2, self.slot, v)
        return self.keys[entry], self.values[entry]


@dataclass
class _Graph:
    run: Callable[[], None]  # one decode step: a CUDA graph's replay, or the step itself uncaptured
    tokens: torch.Tensor  # (B, 1)
    positions: torch.Tensor  # (B, 1) position id of the token being fed
    valid: torch.Tensor  # (B, L) which cache columns a row may attend to
    cache: SlotKVCache
    logits: torch.Tensor  # (B, V) what ``run`` writes


def decode_step(
    model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, cache: SlotKVCache
) -> torch.Tensor:
    """Logits (B, V) of the next token after feeding ``tokens`` (B, 1) at ``positions`` into ``cache``."""
    x = model.embed_tokens(tokens)
    cos, sin = model.rotary(positions, x.dtype)
    hidden = model.norm(model.body(x, AttentionInputs(cos, sin, valid[:, None, None, :], cache)))
    return model.lm_head(hidden[:, -1])


class GraphDecoder:
    """Captured decode steps of one model, reused across ``generate`` calls. With ``capture=False`` the same
    static-buffer steps run without CUDA graphs (on any device: how the CPU tests check this path)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, capture: bool = True) -> None:
        self.model, self.dtype, self.capture = model, dtype, capture
        self.graphs: dict[tuple[int, int], _Graph] = {}

    def _autocast(self):
        device = self.model.embed.weight.device.type
        return torch.autocast(device, dtype=self.dtype, enabled=self.dtype != self.model.embed.weight.dtype)

    def graph(self, batch: int, length: int) -> _Graph:
        key = (batch, length)
        if key not in self.graphs:
            if any(other != length for _, other in self.graphs):  # a new cache length: free the old graphs
                self.graphs.clear()
            self.graphs[key] = self._capture(batch, length)
        return self.graphs[key]

    def _capture(self, batch: int, length: int) -> _Graph:
        model, device = self.model, next(self.model.parameters()).device
        c = model.config
        shape = (model.num_attention_calls, batch, c.num_attention_heads, length, c.head_dim)
        cache = SlotKVCache(
            torch.zeros(shape, dtype=self.dtype, device=device),
            torch.zeros(shape, dtype=self.dtype, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        logits = torch.zeros(batch, c.vocab_size, dtype=self.dtype, device=device)

        def step() -> None:
            with torch.no_grad(), self._autocast():
                logits.copy_(decode_step(model, tokens, positions, valid, cache))
            positions.add_(1)
            cache.slot.add_(1)
            valid.index_fill_(1, cache.slot.clamp(max=length - 1), True)

        if not self.capture:
            return _Graph(step, tokens, positions, valid, cache, logits)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and workspaces outside the capture
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return _Graph(graph.replay, tokens, positions, valid, cache, logits)


class GraphedBatch:
    """The rows being decoded, in a captured graph's buffers. ``rows[i]`` is the buffer row of active row i.

    :meth:`launch` replays the graph without waiting for it, so the engine's bookkeeping of the tokens just
    sampled (on the CPU) overlaps the next step (on the GPU); rows that finished meanwhile are dropped after.
    """

    def __init__(
        self,
        decoder: GraphDecoder,
        prefill: KVCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        logits: torch.Tensor,
        length: int,
    ) -> None:
        self.decoder = decoder
        self.length = -(-(length + 1) // COLUMN_MULTIPLE) * COLUMN_MULTIPLE  # + 1: a launched step past the end
        self.first_logits = logits  # of the active rows, for the first sampled token
        n = prefill.keys.shape[1]
        self.g = decoder.graph(bucket_for(n), self.length)
        width = mask.shape[1]
        g = self.g
        g.cache.keys[:, :n, :, :width] = prefill.keys[:, :, :, :width]
        g.cache.values[:, :n, :, :width] = prefill.values[:, :, :, :width]
        g.valid.zero_()
        g.positions.zero_()  # rows past n are idle; they must still index the rotary tables
        g.valid[:n, :width] = mask.bool()
        g.valid[:, width] = True  # the column the first decode step writes
        g.positions[:n, 0] = positions
        g.cache.slot.fill_(width)
        self.rows = torch.arange(n, device=mask.device)

    def launch(self, tokens: torch.Tensor) -> None:
        """Start the step that feeds the active rows' ``tokens`` (A,)."""
        self.first_logits = None
        self.g.tokens[self.rows, 0] = tokens
        self.g.run()

    def keep(self, index: torch.Tensor) -> None:
        """Keep active rows ``index``; move to a smaller bucket when they fit one."""
        self.rows = self.rows[index]
        n = len(self.rows)
        if bucket_for(n) < self.g.tokens.shape[0]:
            old, self.g = self.g, self.decoder.graph(bucket_for(n), self.length)
            new = self.g
            new.cache.keys[:, :n] = old.cache.keys[:, self.rows]
            new.cache.values[:, :n] = old.cache.values[:, self.rows]
            new.valid[:n] = old.valid[self.rows]
            new.positions.zero_()
            new.positions[:n] = old.positions[self.rows]
            new.logits[:n] = old.logits[self.rows]
            new.cache.slot.copy_(old.cache.slot)
            self.rows = torch.arange(n, device=self.rows.device)
        if self.first_logits is not None:
            self.first_logits = self.first_logits[index]

    def logits(self) -> torch.Tensor:
        """Next-token logits (A, V) of the active rows."""
        return self.first_logits if self.first_logits is not None else self.g.logits[self.rows]
