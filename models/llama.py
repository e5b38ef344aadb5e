"""The Llama family, written for zoo: one implementation whose config fields, not subclasses, give Llama 2/3/3.x,
Qwen2/2.5, Qwen3, Mistral and SmolLM2, matching transformers' ``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``Qwen3ForCausalLM`` and ``MistralForCausalLM``.

- pre-RMSNorm blocks, sequential residual: ``y = x + attn(norm_1(x)); y + mlp(norm_2(y))``; RMSNorm computed in
  fp32 (as transformers does) and scaled by its weight in the input's dtype;
- grouped-query attention: ``num_key_value_heads`` key/value heads shared by ``num_attention_heads`` query
  heads (the KV cache holds the key/value heads only); ``head_dim`` may differ from hidden / heads (Qwen3);
  one fused projection ``qkv`` of ``[q (heads x head_dim) | k | v (kv_heads x head_dim)]``; biases on q, k, v
  (``attention_bias``: Qwen2/2.5) and on the output projection (``attention_out_bias``: Llama's
  ``attention_bias`` sets both); per-head RMSNorm of queries and keys before the rotation (``qk_norm``: Qwen3);
- rotary embeddings on the whole head (the half-rotation layout) with ``rope_theta`` and ``rope_scaling``:
  ``linear`` (positions divided by ``factor``) or ``llama3`` (long wavelengths divided by ``factor``, short ones
  kept, a smooth ramp between, from ``low_freq_factor``, ``high_freq_factor`` and
  ``original_max_position_embeddings``; Llama 3.1+);
- a SwiGLU MLP with one fused ``fc`` of ``[gate | up]``: ``proj(silu(gate) * up)``;
- ``sliding_window`` (Mistral): each token attends to the last ``sliding_window`` positions, itself included;
- tied or untied input embedding and output head (``tie_word_embeddings``).

Everything else (the KV cache and the native engine's decode step, packed rows with segment ids, attention probes,
hidden states, the fused cross-entropy, the block class that FSDP wraps) is :class:`zoo.models.gpt_neox.GPTNeoX`'s,
which this model extends. Initialisation as GPT-NeoX's (GPT-2's scheme); RMSNorm weights start at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError, require_int
from zoo.models.attention_maps import show_maps
from zoo.models.gpt_neox import AttentionInputs, GPTNeoX, KVCache, Rotary, apply_rotary, rope_frequencies

ROPE_TYPES = ("default", "linear", "llama3")
ROPE_LLAMA3 = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class LlamaConfig:
    """Field names and meanings are those of transformers' Llama, Qwen2, Qwen3 and Mistral ``config.json``
    (except ``attention_out_bias``, ``qk_norm``: what the families differ in, named)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: num_attention_heads (no grouping)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {rope_type: linear | llama3, factor, ...}
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False  # biases on the q, k and v projections
    attention_out_bias: bool = False  # a bias on the attention's output projection
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each head's queries and keys (Qwen3)
    sliding_window: int | None = None  # attend to the last this many positions (Mistral); None: all
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False  # recompute each block in the backward pass (activation memory for compute)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    arch = "llama"  # class attribute, not a field: the key under which `zoo.models` registers it

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        for key in (*sizes, "max_position_embeddings"):
            require_int(f"model.{key}", getattr(self, key), 1)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        require_int("model.num_key_value_heads", self.num_key_value_heads, 1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                  f"{self.num_attention_heads}: give model.head_dim")  # fmt: skip
            self.head_dim = self.hidden_size // self.num_attention_heads
        require_int("model.head_dim", self.head_dim, 2)
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even (rotary pairs), got {self.head_dim}")
        if self.sliding_window is not None:
            require_int("model.sliding_window", self.sliding_window, 1)
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)

    @property
    def rotary_dim(self) -> int:
        return self.head_dim

    def to_dict(self) -> dict:
        return {"arch": self.arch, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def check_rope_scaling(scaling: dict[str, Any]) -> None:
    """One line for a ``rope_scaling`` zoo cannot apply: an unknown type, a setting missing or not > 0."""
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"model.rope_scaling type {rope_type!r} is not one of {', '.join(ROPE_TYPES)}")
    needed = {"linear": ("factor",), "llama3": ROPE_LLAMA3}.get(rope_type, ())
    missing = [key for key in needed if key not in scaling]
    if missing:
        raise ConfigError(f"model.rope_scaling ({rope_type}) needs {', '.join(missing)}")
    for key in needed:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"model.rope_scaling.{key} must be a number > 0, got {value!r}")
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError("model.rope_scaling.high_freq_factor must exceed low_freq_factor (llama3)")


def llama_frequencies(config: LlamaConfig) -> torch.Tensor:
    """The rotary inverse frequencies with ``rope_scaling`` applied (transformers' ``linear`` and ``llama3``)."""
    inv_freq = rope_frequencies(config.head_dim, config.rope_theta)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        original = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        between = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= original / high) & (wavelength <= original / low)
        return torch.where(medium, between, scaled)
    return inv_freq


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in fp32 and scaled in the input's dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.widths = [self.num_heads * self.head_dim, *2 * [self.num_kv_heads * self.head_dim]]
        self.qkv = nn.Linear(config.hidden_size, sum(self.widths), bias=config.attention_bias)
        self.proj = nn.Linear(self.widths[0], config.hidden_size, bias=config.attention_out_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache_entry: int) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.widths, dim=-1)
        q, k = q.view(B, T, self.num_heads, self.head_dim), k.view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = inputs.cos[:, :, None], inputs.sin[:, :, None]
        q, k = apply_rotary(q, cos, sin).transpose(1, 2), apply_rotary(k, cos, sin).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if inputs.cache is not None:
            k, v = inputs.cache.update(cache_entry, k, v)
        grouped = self.num_kv_heads != self.num_heads
        if T == 1 and inputs.probe is None:  # a decode step: one query a row, plain matmuls (see _decode_attention)
            y = self._decode_attention(q, k, v, inputs.mask)
        elif inputs.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=grouped)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask, enable_gqa=grouped)
        if inputs.probe is not None and cache_entry in inputs.probe.layers:
            show_maps(inputs.probe, cache_entry, q, k, inputs.mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.widths[0]))

    def _decode_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of one query a row (B, heads, 1, D) over the cached keys and values (B, kv_heads, L, D): the
        query heads that share a key/value head are one matrix, so each is two small matmuls with no copy of the
        keys; the softmax in fp32. On a CPU this is several times faster than sdpa's kernel for one query (a
        SmolLM2 decode step in bf16 spent a third of its time there)."""
        B, _, _, D = q.shape
        grouped = q.view(B, self.num_kv_heads, self.num_heads // self.num_kv_heads, D)
        scores = (grouped @ k.transpose(-1, -2)).float() * D**-0.5  # (B, kv_heads, group, L)
        if mask is not None:  # (B or 1, 1, 1, L): additive, or boolean (True: attend)
            mask = mask.view(mask.shape[0], 1, 1, -1)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        y = torch.softmax(scores, dim=-1).to(v.dtype) @ v  # (B, kv_heads, group, D)
        return y.view(B, self.num_heads, 1, D)


class SwiGLU(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)  # [gate | up]
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = GroupedQueryAttention(config)
        self.norm_2 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache_entry: int) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), inputs, cache_entry)
        return x + self.mlp(self.norm_2(x))


class Llama(GPTNeoX):
    """Causal language model of the Llama family: token ids (B, T) → logits (B, T, vocab)."""

    config_class = LlamaConfig
    block_class = LlamaBlock

    def build_blocks(self, config: LlamaConfig) -> None:
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.num_hidden_layers))

    def final_norm(self, config: LlamaConfig) -> nn.Module:
        return RMSNorm(config.hidden_size, config.rms_norm_eps)

    def rotary_embedding(self, config: LlamaConfig) -> Rotary:
        return Rotary(llama_frequencies(config), config.max_position_embeddings)

    @property
    def sliding_window(self) -> int | None:
        return self.config.sliding_window

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        window = self.config.sliding_window
        if window is not None and max_length > window:
            raise ConfigError(
                f"decoding {max_length} positions with a sliding window of {window} is not built yet: keep prompts "
                f"and max_new_tokens within model.sliding_window={window}"
            )
        return super().new_cache(batch_size, max_length, dtype, device)
