"""Conversion between transformers' GPT-NeoX format (EleutherAI's Pythia checkpoints) and zoo's GPTNeoX.

The weight layouts are identical (NeoX's per-head ``[q, k, v]`` fused projection included), so conversion is a
renaming of keys; configs map field by field. Export writes EleutherAI's own names (``embed_out``,
``rotary_pct``, ``rotary_emb_base``), which every transformers version loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from zoo.models.gpt_neox import GPTNeoXConfig

# zoo name pattern -> HF name pattern ({} is the layer index)
_GPT_NEOX_WEIGHTS = {
    "embed.weight": "gpt_neox.embed_in.weight",
    "blocks.{}.norm_1.weight": "gpt_neox.layers.{}.input_layernorm.weight",
    "blocks.{}.norm_1.bias": "gpt_neox.layers.{}.input_layernorm.bias",
    "blocks.{}.attn.qkv.weight": "gpt_neox.layers.{}.attention.query_key_value.weight",
    "blocks.{}.attn.qkv.bias": "gpt_neox.layers.{}.attention.query_key_value.bias",
    "blocks.{}.attn.proj.weight": "gpt_neox.layers.{}.attention.dense.weight",
    "blocks.{}.attn.proj.bias": "gpt_neox.layers.{}.attention.dense.bias",
    "blocks.{}.norm_2.weight": "gpt_neox.layers.{}.post_attention_layernorm.weight",
    "blocks.{}.norm_2.bias": "gpt_neox.layers.{}.post_attention_layernorm.bias",
    "blocks.{}.mlp.fc.weight": "gpt_neox.layers.{}.mlp.dense_h_to_4h.weight",
    "blocks.{}.mlp.fc.bias": "gpt_neox.layers.{}.mlp.dense_h_to_4h.bias",
    "blocks.{}.mlp.proj.weight": "gpt_neox.layers.{}.mlp.dense_4h_to_h.weight",
    "blocks.{}.mlp.proj.bias": "gpt_neox.layers.{}.mlp.dense_4h_to_h.bias",
    "norm.weight": "gpt_neox.final_layer_norm.weight",
    "norm.bias": "gpt_neox.final_layer_norm.bias",
    "lm_head.weight": "embed_out.weight",
}
# Buffers that old HF checkpoints carry and that zoo recomputes.
_HF_IGNORED = re.compile(r".*\.(attention\.(bias|masked_bias)|rotary_emb\.inv_freq)$")


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


_TO_HF = [(_pattern(z), h) for z, h in _GPT_NEOX_WEIGHTS.items()]
_FROM_HF = [(_pattern(h), z) for z, h in _GPT_NEOX_WEIGHTS.items()]
_FROM_HF.append((_pattern("lm_head.weight"), "lm_head.weight"))  # transformers >= 5 names the head so


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        if m := pattern.match(name):
            return template.format(*m.groups())
    return None


def gpt_neox_state_dict_from_hf(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf_state.items():
        if _HF_IGNORED.match(name):
            continue
        zoo_name = _rename(name, _FROM_HF)
        if zoo_name is None:
            raise ValueError(f"unexpected weight {name!r} in a GPT-NeoX checkpoint")
        out[zoo_name] = tensor
    return out


def gpt_neox_state_dict_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        hf_name = _rename(name, _TO_HF)
        if hf_name is None:
            raise ValueError(f"zoo weight {name!r} has no GPT-NeoX (HF) counterpart")
        out[hf_name] = tensor
    return out


def gpt_neox_config_from_hf(hf: Mapping[str, Any]) -> GPTNeoXConfig:
    """A ``config.json`` of ``model_type: gpt_neox`` → zoo config (older and transformers-5 rope fields)."""
    if hf.get("model_type") != "gpt_neox":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'gpt_neox'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (Pythia uses 'gelu')")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} is not supported")
    eos = hf.get("eos_token_id", 0)
    return GPTNeoXConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rotary_pct=hf.get("rotary_pct", rope.get("partial_rotary_factor", 0.25)),
        rotary_emb_base=hf.get("rotary_emb_base", rope.get("rope_theta", 10000.0)),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        use_parallel_residual=hf.get("use_parallel_residual", True),
        attention_bias=hf.get("attention_bias", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id", 0) or 0,
        eos_token_id=(eos[0] if isinstance(eos, list) else eos) or 0,
    )


def gpt_neox_config_to_hf(config: GPTNeoXConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rotary_pct": config.rotary_pct,
        "rotary_emb_base": config.rotary_emb_base,
        "layer_norm_eps": config.layer_norm_eps,
        "use_parallel_residual": config.use_parallel_residual,
        "attention_bias": config.attention_bias,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "hidden_act": "gelu",
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }
