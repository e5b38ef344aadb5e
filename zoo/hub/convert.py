"""Conversion between transformers' formats and zoo's own models.

- GPT-NeoX (EleutherAI's Pythia checkpoints) and zoo's GPTNeoX: the weight layouts are identical (NeoX's per-head
  ``[q, k, v]`` fused projection included), so conversion is a renaming of keys; configs map field by field.
  Export writes EleutherAI's own names (``embed_out``, ``rotary_pct``, ``rotary_emb_base``), which every
  transformers version loads.
- The Llama family (``model_type`` llama, qwen2, qwen3, mistral) and zoo's Llama: q, k and v projections are
  concatenated into zoo's ``qkv`` and the MLP's gate and up into its ``fc`` (split again on export); configs map
  field by field, the rope settings from transformers 5's ``rope_parameters`` or the older ``rope_theta`` and
  ``rope_scaling``. Export names the ``model_type`` that holds the config: qwen3 for q/k norms, qwen2 for biases
  on q, k, v alone, mistral for a sliding window, llama otherwise.
- GGUF files of the Llama family (:func:`read_gguf`): dequantized to fp32 by transformers' GGUF support.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.errors import ConfigError, first_line
from zoo.models.gpt_neox import GPTNeoXConfig
from zoo.models.llama import LlamaConfig

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


# -- the Llama family ------------------------------------------------------------------------------------------
LLAMA_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
_LLAMA_WEIGHTS = {  # zoo name pattern -> HF name pattern, for what maps one to one
    "embed.weight": "model.embed_tokens.weight",
    "blocks.{}.norm_1.weight": "model.layers.{}.input_layernorm.weight",
    "blocks.{}.norm_2.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blocks.{}.attn.proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blocks.{}.attn.proj.bias": "model.layers.{}.self_attn.o_proj.bias",
    "blocks.{}.attn.q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "blocks.{}.attn.k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "blocks.{}.mlp.proj.weight": "model.layers.{}.mlp.down_proj.weight",
    "blocks.{}.mlp.proj.bias": "model.layers.{}.mlp.down_proj.bias",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_TO_HF = [(_pattern(z), h) for z, h in _LLAMA_WEIGHTS.items()]
_LLAMA_FROM_HF = [(_pattern(h), z) for z, h in _LLAMA_WEIGHTS.items()]
_FUSED = {  # zoo's fused projection -> the HF projections it concatenates, in order
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.fc": ("mlp.gate_proj", "mlp.up_proj"),
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def llama_config_from_hf(hf: Mapping[str, Any]) -> LlamaConfig:
    """A ``config.json`` of the Llama family (``model_type`` llama, qwen2, qwen3 or mistral) → zoo config."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_MODEL_TYPES:
        raise ValueError(f"config.json has model_type {model_type!r}, not one of {', '.join(LLAMA_MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (the Llama family uses 'silu')")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    bias = hf.get("attention_bias", False)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", model_type == "mistral") else None
    eos = hf.get("eos_token_id")
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rope_theta=float(theta),
        rope_scaling=rope if rope_type != "default" else None,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        attention_bias=True if model_type == "qwen2" else bias,
        attention_out_bias=False if model_type == "qwen2" else bias,
        mlp_bias=hf.get("mlp_bias", False),
        qk_norm=model_type == "qwen3",
        sliding_window=window,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )


def llama_config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """zoo config → a ``config.json`` of the model_type that holds it (see the module's docstring)."""
    if config.qk_norm:
        model_type, architecture = "qwen3", "Qwen3ForCausalLM"
    elif config.attention_bias != config.attention_out_bias:
        model_type, architecture = "qwen2", "Qwen2ForCausalLM"
    elif config.sliding_window is not None:
        model_type, architecture = "mistral", "MistralForCausalLM"
    else:
        model_type, architecture = "llama", "LlamaForCausalLM"
    if model_type != "llama" and config.mlp_bias:
        raise ValueError(f"mlp_bias has no place in a {model_type} config")
    if model_type == "qwen2" and not config.attention_bias:
        raise ValueError("a bias on the attention's output alone has no transformers config")
    values = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta},
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if model_type in ("llama", "qwen3"):
        values["attention_bias"] = config.attention_bias
    if model_type == "llama":
        values["mlp_bias"] = config.mlp_bias
    if model_type == "qwen2":
        values["use_sliding_window"] = config.sliding_window is not None
    values["sliding_window"] = config.sliding_window
    return values


def llama_state_dict_from_hf(hf_state: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """transformers' Llama-family weights → zoo's (q, k, v and gate, up concatenated; a tied head left out)."""
    out, parts = {}, {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if (m := _LAYER.match(name)) and any(m[2] in hf for hf in _FUSED.values()):
            parts[(m[1], m[2], m[3])] = tensor
            continue
        zoo_name = _rename(name, _LLAMA_FROM_HF)
        if zoo_name is None:
            raise ValueError(f"unexpected weight {name!r} in a Llama-family checkpoint")
        out[zoo_name] = tensor
    for layer in range(config.num_hidden_layers):
        for fused, pieces in _FUSED.items():
            for kind in ("weight", "bias"):
                found = [parts.get((str(layer), piece, kind)) for piece in pieces]
                if all(t is not None for t in found):
                    out[f"blocks.{layer}.{fused}.{kind}"] = torch.cat(found)
                elif any(t is not None for t in found) or kind == "weight":
                    raise ValueError(f"layer {layer}: {', '.join(pieces)} {kind}s are incomplete")
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out["embed.weight"]
    return out


def llama_state_dict_to_hf(state: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """zoo's Llama weights → transformers' names (the fused projections split; a tied head written once)."""
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    widths = {"attn.qkv": [q, kv, kv], "mlp.fc": [config.intermediate_size] * 2}
    out = {}
    for name, tensor in state.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        if (m := re.match(r"^blocks\.(\d+)\.(attn\.qkv|mlp\.fc)\.(weight|bias)$", name)) is not None:
            for piece, part in zip(_FUSED[m[2]], tensor.split(widths[m[2]]), strict=True):
                out[f"model.layers.{m[1]}.{piece}.{m[3]}"] = part
            continue
        hf_name = _rename(name, _LLAMA_TO_HF)
        if hf_name is None:
            raise ValueError(f"zoo weight {name!r} has no Llama-family (HF) counterpart")
        out[hf_name] = tensor
    return out


# -- every family zoo implements, by model_type and by arch --------------------------------------------------------
NATIVE_MODEL_TYPES = ("gpt_neox", *LLAMA_MODEL_TYPES)  # what zoo builds natively from a transformers directory


def config_from_hf(hf: Mapping[str, Any]) -> GPTNeoXConfig | LlamaConfig:
    """A transformers ``config.json`` of a family zoo implements → zoo's config."""
    if hf.get("model_type") == "gpt_neox":
        return gpt_neox_config_from_hf(hf)
    return llama_config_from_hf(hf)


def state_dict_from_hf(hf_state: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    if config.arch == "gpt_neox":
        return gpt_neox_state_dict_from_hf(hf_state)
    return llama_state_dict_from_hf(hf_state, config)


def config_to_hf(config) -> dict[str, Any]:
    """zoo's config of a family transformers also implements → its ``config.json``."""
    if config.arch == "gpt_neox":
        return gpt_neox_config_to_hf(config)
    if config.arch == "llama":
        return llama_config_to_hf(config)
    raise ValueError(f"a {config.arch!r} model has no transformers counterpart")


def state_dict_to_hf(state: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    if config.arch == "gpt_neox":
        return gpt_neox_state_dict_to_hf(state)
    return llama_state_dict_to_hf(state, config)


# -- GGUF files ----------------------------------------------------------------------------------------------------
def read_gguf(path: Path, tokenizer_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """zoo's config and weights of the model in a GGUF file, dequantized by transformers' GGUF support (the ``gguf``
    extra); its tokenizer, chat template included, saved into ``tokenizer_dir``. Only the families zoo implements
    natively are imported; anything transformers cannot read is one line naming the file."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise ConfigError(f"{path}: reading GGUF needs the gguf package: pip install 'zoo[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoo.models.hf import quiet_transformers

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # an architecture or quantization transformers does not read, or not GGUF at all
        reason = f"{type(e).__name__}: {first_line(e)}"
        raise ConfigError(f"{path}: transformers cannot read this GGUF file ({reason})") from None
    hf_config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    if hf_config.get("model_type") not in LLAMA_MODEL_TYPES:
        raise ConfigError(f"{path}: a {hf_config.get('model_type')!r} model; zoo imports GGUF files of the Llama "
                          f"family ({', '.join(LLAMA_MODEL_TYPES)})")  # fmt: skip
    config = llama_config_from_hf(hf_config)
    tokenizer.save_pretrained(tokenizer_dir)
    return config.to_dict(), llama_state_dict_from_hf(model.state_dict(), config)
