"""GPT-NeoX, the Pythia architecture (Black et al. 2022; Biderman et al. 2023), written for zoo.

Architectural choices, all matching EleutherAI's Pythia checkpoints and transformers' ``GPTNeoXForCausalLM``:

- pre-LayerNorm blocks with a *parallel residual*: ``x + attn(ln1(x)) + mlp(ln2(x))`` (sequential when
  ``use_parallel_residual`` is false: ``y = x + attn(ln1(x)); y + mlp(ln2(y))``);
- *partial rotary* embeddings (GPT-NeoX half-rotation layout) on the first ``rotary_pct`` of each head;
- a fused ``qkv`` projection laid out per head as ``[q, k, v]`` (the NeoX layout, so HF weights copy as is);
- exact (erf) GELU MLP, biases everywhere, untied input embedding and output head;
- attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels);
- a preallocated KV cache (:class:`KVCache`) indexed by *attention call*, so models that apply one block
  several times (``recursive.py``) keep one entry per application.

Initialisation (Pythia's paper is silent on the exact values it used for these checkpoints; zoo chooses the
GPT-2 scheme): every weight ~ N(0, ``initializer_range``), output projections of attention and MLP scaled by
``1/sqrt(2·N)`` where N is the number of blocks in the unrolled compute graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.errors import ConfigError, require_int
from zoo.models.attention_maps import AttentionProbe, show_maps
from zoo.models.cross_entropy import linear_cross_entropy


@dataclass
class GPTNeoXConfig:
    """Field names and meanings are those of EleutherAI's ``config.json`` for Pythia."""

    vocab_size: int = 50304
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 2048
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 0
    gradient_checkpointing: bool = False  # recompute each block in the backward pass (activation memory for compute)

    arch = "gpt_neox"  # class attribute, not a field: the key under which `zoo.models` registers it

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        for key in (*sizes, "max_position_embeddings"):
            require_int(f"model.{key}", getattr(self, key), 1)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=True is not supported: Pythia's head is untied")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:  # every head has its own keys and values (a KV cache's heads)
        return self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def to_dict(self) -> dict:
        """``arch`` and every field a user sets (derived fields are left out: they follow from the rest)."""
        return {"arch": self.arch, **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls) if f.init}


def _pythia(hidden: int, layers: int, heads: int) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=2048,
    )


# Source: https://huggingface.co/EleutherAI/pythia-{size}/blob/main/config.json (every size shares
# vocab 50304, rotary_pct 0.25, rotary_emb_base 10000, layer_norm_eps 1e-5, parallel residual, bos=eos=0).
PRESETS: dict[str, GPTNeoXConfig] = {
    "pythia-14m": _pythia(128, 6, 4),
    "pythia-70m": _pythia(512, 6, 8),
    "pythia-160m": _pythia(768, 12, 12),
    "pythia-410m": _pythia(1024, 24, 16),
    "pythia-1b": _pythia(2048, 16, 8),
    "pythia-1.4b": _pythia(2048, 24, 16),
}


class KVCache:
    """Preallocated keys and values for ``num_entries`` attention calls of a batch.

    ``length`` counts the positions already stored (the same for every row; left padding is handled with an
    attention mask). A forward pass writes ``T`` new positions for every entry and then calls
    :meth:`advance`.
    """

    def __init__(
        self,
        num_entries: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (num_entries, batch_size, num_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0

    def update(self, entry: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, H, T, D) after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache overflow: {end} positions > max_length {self.max_length}")
        self.keys[entry, :, :, self.length : end] = k
        self.values[entry, :, :, self.length : end] = v
        return self.keys[entry, :, :, :end], self.values[entry, :, :, :end]

    def advance(self, num_positions: int) -> None:
        self.length += num_positions

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (to drop finished sequences while decoding)."""
        self.keys = self.keys[:, rows]
        self.values = self.values[:, rows]


@dataclass
class StateTrace:
    """The hidden states one forward pass goes through, recorded for the loop probes (``zoo.analysis.probes``).

    ``states``: named (B, T, hidden) states in the order they occur. ``updates``: for each stage (a block, or
    a recursive model's prelude, core loop and coda) the state it received and the state it produced.
    """

    states: dict[str, torch.Tensor] = field(default_factory=dict)
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def stage(self, name: str, before: torch.Tensor, after: torch.Tensor) -> None:
        self.updates[name] = (before, after)


@dataclass
class AttentionInputs:
    """What every attention call of one forward pass shares: rotary tables, mask, cache."""

    cos: torch.Tensor  # (B or 1, T, rotary_dim)
    sin: torch.Tensor
    mask: torch.Tensor | None  # boolean or additive (B or 1, 1, T, past + T); None means plain causal
    cache: KVCache | None
    probe: AttentionProbe | None = None  # shown the maps of the attention calls it asks for


def rope_frequencies(rotary_dim: int, base: float) -> torch.Tensor:
    """The rotary embedding's inverse frequencies ``base^(-2i / rotary_dim)``, i < rotary_dim / 2, in fp32."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


class Rotary(nn.Module):
    """cos/sin tables of a rotary embedding (the half-rotation layout) of inverse frequencies ``inv_freq``,
    precomputed in fp32 up to ``max_positions``."""

    def __init__(self, inv_freq: torch.Tensor, max_positions: int) -> None:
        super().__init__()
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[position_ids].to(dtype), self.sin[position_ids].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x``'s last dimension by the half-rotation rule;
    ``cos`` and ``sin`` broadcast against ``x``."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = x_rot * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, x_pass], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache_entry: int) -> torch.Tensor:
        B, T, C = x.shape
        # NeoX layout: per head the fused projection holds [q | k | v] (litgpt calls it interleaved).
        qkv = self.qkv(x).view(B, T, self.num_heads, 3, self.head_dim)
        # queries and keys rotated together: (B, T, H, 2, D) against cos/sin (B, T, 1, 1, rotary)
        qk = apply_rotary(qkv[:, :, :, :2], inputs.cos[:, :, None, None], inputs.sin[:, :, None, None])
        q, k = qk.transpose(1, 2).unbind(3)
        v = qkv[:, :, :, 2].transpose(1, 2)
        if inputs.cache is not None:
            k, v = inputs.cache.update(cache_entry, k, v)
        if inputs.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask)
        if inputs.probe is not None and cache_entry in inputs.probe.layers:
            show_maps(inputs.probe, cache_entry, q, k, inputs.mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.parallel_residual = config.use_parallel_residual

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache_entry: int) -> torch.Tensor:
        a = self.attn(self.norm_1(x), inputs, cache_entry)
        if self.parallel_residual:
            return x + a + self.mlp(self.norm_2(x))
        x = x + a
        return x + self.mlp(self.norm_2(x))


def attention_mask(
    attention_mask: torch.Tensor | None,
    num_new: int,
    past: int,
    device: torch.device,
    segment_ids: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, past + T) for sdpa, or None when plain causal attention is exact.

    ``attention_mask`` (B, past + T) marks real tokens with 1 and padding with 0. Every query may always see
    itself, so a padding query never has an empty row (its output is unused, but must not be NaN).
    ``segment_ids`` (B, T) separates sequences packed into one row: a token attends within its segment only.
    ``window``: a token attends to the last ``window`` positions only, itself included (a sliding window).
    """
    total = past + num_new
    windowed = window is not None and total > window
    if attention_mask is None and segment_ids is None and not windowed and (past == 0 or num_new == 1):
        return None
    query_pos = torch.arange(past, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None]
    if windowed:
        mask = mask & (key_pos > query_pos - window)[None, None]
    if segment_ids is not None:
        if past:
            raise ValueError("packed segments cannot be combined with a KV cache")
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :total].bool()
        mask = mask | (key_pos == query_pos)[None, None]
    return mask


class GPTNeoX(nn.Module):
    """Causal language model: token ids (B, T) → logits (B, T, vocab)."""

    config_class = GPTNeoXConfig

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.build_blocks(config)
        self.norm = self.final_norm(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = self.rotary_embedding(config)
        init_weights(self, config.initializer_range, num_compute_blocks=self.num_attention_calls)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    # Blocks that distributed strategies wrap or shard one by one.
    block_class = Block
    sliding_window: int | None = None  # every token attends to every earlier one

    def build_blocks(self, config: GPTNeoXConfig) -> None:
        """The transformer blocks; variants (recursive, MeSH) lay them out differently."""
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))

    def final_norm(self, config: GPTNeoXConfig) -> nn.Module:
        return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def rotary_embedding(self, config: GPTNeoXConfig) -> Rotary:
        inv_freq = rope_frequencies(config.rotary_dim, config.rotary_emb_base)
        return Rotary(inv_freq, config.max_position_embeddings)

    @property
    def num_attention_calls(self) -> int:
        """Entries a KV cache needs: one per block application in the forward pass."""
        return self.config.num_hidden_layers

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        c = self.config
        return KVCache(
            self.num_attention_calls,
            batch_size,
            c.num_key_value_heads,
            max_length,
            c.head_dim,
            dtype=dtype or self.embed.weight.dtype,
            device=device or self.embed.weight.device,
        )

    def attention_inputs(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        dtype: torch.dtype,
        segment_ids: torch.Tensor | None = None,
        probe: AttentionProbe | None = None,
    ) -> AttentionInputs:
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_position_embeddings:
            raise ConfigError(
                f"a sequence of {past + T} tokens exceeds the model's max_position_embeddings="
                f"{self.config.max_position_embeddings} (shorten data.seq_len, the prompts or max_new_tokens)"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        cos, sin = self.rotary(position_ids, dtype)
        mask = attention_mask(mask, T, past, input_ids.device, segment_ids, self.sliding_window)
        return AttentionInputs(cos, sin, mask, cache, probe)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)

    def run_block(self, block: nn.Module, x: torch.Tensor, inputs: AttentionInputs, entry: int) -> torch.Tensor:
        """One block; with ``gradient_checkpointing`` in training its activations are not kept but recomputed in
        the backward pass (only the block's input is stored)."""
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, inputs, entry, use_reentrant=False)
        return block(x, inputs, entry)

    def body(self, x: torch.Tensor, inputs: AttentionInputs, trace: StateTrace | None = None) -> torch.Tensor:
        """The blocks between embedding and final norm; variants (recursive, MeSH) replace this."""
        if trace is not None:
            trace.states["h_emb"] = x
        for i, block in enumerate(self.blocks):
            y = self.run_block(block, x, inputs, i)
            if trace is not None:
                trace.stage(f"block{i + 1}", x, y)
                trace.states[f"h{i + 1}"] = y
            x = y
        return x

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor) -> StateTrace:
        """Run the blocks on ``input_ids`` and record every state they pass through."""
        trace = StateTrace()
        x = self.embed_tokens(input_ids)
        self.body(x, self.attention_inputs(input_ids, None, None, None, x.dtype), trace)
        return trace

    def decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None, cache
    ) -> torch.Tensor:
        """Next-token logits (B, V) after feeding ``tokens`` (B, 1) at ``positions`` (B, 1) into ``cache`` (whose
        ``update`` writes every row at its own column), each row attending to the columns ``valid`` (B, L) marks
        (None: every column the cache returns)."""
        x = self.embed_tokens(tokens)
        cos, sin = self.rotary(positions, x.dtype)
        mask = None  # additive, built once for every attention call of the step
        if valid is not None:
            mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill_(~valid, float("-inf"))
            mask = mask[:, None, None, :]
        hidden = self.norm(self.body(x, AttentionInputs(cos, sin, mask, cache)))
        return self.logits(hidden[:, -1])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head over final-normed hidden states (..., hidden) -> (..., vocab)."""
        return self.lm_head(hidden)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_probe: AttentionProbe | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states (B, T, hidden); advances ``cache`` by T positions. ``attention_probe`` is
        shown the attention maps it asks for (:mod:`zoo.models.attention_maps`)."""
        x = self.embed_tokens(input_ids)
        inputs = self.attention_inputs(
            input_ids, position_ids, attention_mask, cache, x.dtype, segment_ids, attention_probe
        )
        x = self.norm(self.body(x, inputs))
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_probe: AttentionProbe | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); or, given ``targets`` (B, T; -100 ignored), their mean cross-entropy,
        computed fused with the output head (:mod:`zoo.models.cross_entropy`) without materialising logits.
        ``segment_ids`` (with ``position_ids`` restarting per segment) isolates sequences packed in a row;
        ``attention_probe`` is shown the attention maps it asks for (:mod:`zoo.models.attention_maps`)."""
        h = self.hidden_states(
            input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            segment_ids=segment_ids,
            attention_probe=attention_probe,
        )
        if targets is not None:
            return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten())
        return self.logits(h)


def init_weights(model: nn.Module, std: float, num_compute_blocks: int) -> None:
    """N(0, std) for every Linear and Embedding weight, zero biases, unit LayerNorms; the output projections
    of attention and MLP (``*.proj``) get ``std / sqrt(2 · num_compute_blocks)`` (depth-aware init)."""
    out_std = std / math.sqrt(2 * num_compute_blocks)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, out_std if name.endswith(".proj") else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
