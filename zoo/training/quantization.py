"""Frozen models in 8-bit or 4-bit through bitsandbytes: the RL reference policy, a frozen reader, the native rollout
engine's replica, the frozen base of a QLoRA policy (:mod:`zoo.training.lora`).

Which layers: every ``nn.Linear`` inside the model's transformer blocks (its ``block_class``), for zoo's own
models and Hugging Face ones alike. The embedding, the output head (zoo's fused loss reads its weight), MeSH's
routers and anything else outside the blocks stay in full precision: the logits are most sensitive to them (they
are half of Pythia-160M's weights, a fifth of Pythia-1B's).

- ``8bit``: LLM.int8() (``bnb.nn.Linear8bitLt``): row-wise absmax int8 weights, outlier features above
  ``threshold`` 6.0 (bitsandbytes' and transformers' default) multiplied in 16-bit.
- ``4bit``: NF4 with double quantization (``bnb.nn.Linear4bit``, ``quant_type="nf4"``, ``compress_statistics``: the
  QLoRA paper's recipe), computed in the dtype of the weights it replaces; blocks of 64 weights (32 where a row's
  length is not a multiple of 64). A layer whose input or output width is not a multiple of 32 stays in full
  precision: bitsandbytes' CPU kernels pack whole blocks of 32 rows and of a row's weights.

Tolerance (the documented contract, tested in ``tests/training/test_quantization.py`` on trained and random models):
the mean over tokens of ``|log p_quantized - log p_full|``, on sequences the full model samples, is at most
:data:`LOGPROB_TOLERANCE` (8-bit 0.05, 4-bit 0.2 nats). Measured on the shipped entries: 8-bit 0.004-0.019, 4-bit
0.028-0.091 (the arithmetic policy, small and sharp, is the most sensitive).

A quantized model is derived state: it is never written to a checkpoint, but rebuilt from the weights it was made
from (bitsandbytes cannot load a 4-bit state dict into a module). Quantization happens on the weights' device
(bitsandbytes 0.49+ runs both kinds on the CPU as well as on CUDA).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zoo.errors import ConfigError


class _Quiet(logging.Filter):
    """bitsandbytes' warnings that are no news: one on every 8-bit matmul of float32 inputs (the cast is part of
    LLM.int8()), and one at import on a CPU that its optional Hub-downloaded 4-bit kernel is absent (it falls back
    to its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("MatMul8bitLt: inputs will be cast", "Failed to load CPU gemm_4bit_forward"))


_QUIET = _Quiet()
for _name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).addFilter(_QUIET)

BITS = ("8bit", "4bit")
LOGPROB_TOLERANCE = {"8bit": 0.05, "4bit": 0.2}  # mean |Δ log p| per token (nats) on sequences the model samples


def require_bitsandbytes(key: str):
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"{key} needs bitsandbytes: pip install 'zoo[bnb]'") from None
    return bitsandbytes


def check_bits(key: str, bits: str | None) -> str | None:
    """``bits`` if it is None or one of :data:`BITS`; else a one-line error naming ``key``."""
    if bits is not None and bits not in BITS:
        raise ConfigError(f"{key} must be null or one of {', '.join(BITS)}, got {bits!r}")
    return bits


def quantize_frozen(model: nn.Module, bits: str, key: str = "quantization") -> nn.Module:
    """``model`` with the linear layers of its blocks replaced, in place, by ``bits`` bitsandbytes layers, every
    parameter frozen (``requires_grad=False``) and in eval mode. ``key`` names the setting in errors."""
    from zoo.models import is_block

    bnb = require_bitsandbytes(key)
    check_bits(key, bits)
    blocks = [m for m in model.modules() if is_block(m)]
    if not blocks:
        raise ConfigError(f"{key}: {type(model).__name__} has no transformer blocks to quantize")
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, _quantized_linear(bnb, child, bits))
    return model.requires_grad_(False).eval()


def _quantized_linear(bnb, linear: nn.Linear, bits: str) -> nn.Module:
    weight, bias = linear.weight.detach(), linear.bias
    device = weight.device
    if bits == "8bit":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            has_fp16_weights=False,
            threshold=6.0,
            device="meta",
        )
        # Int8Params quantizes when it leaves the CPU for a device (or is "moved" onto the CPU itself)
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        if linear.in_features % 32 or linear.out_features % 32:  # bitsandbytes' CPU kernels: whole 32-blocks
            return linear
        blocksize = 64 if linear.in_features % 64 == 0 else 32
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            compute_dtype=weight.dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            weight.cpu(), requires_grad=False, blocksize=blocksize, compress_statistics=True, quant_type="nf4"
        )
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().cpu(), requires_grad=False)
    return layer.to(device)


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is (or holds) a bitsandbytes linear layer."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in module.modules())


def dequantized_weight(layer: nn.Module, chunk: int = 4096) -> torch.Tensor:
    """The weight (out, in) a plain or bitsandbytes linear layer computes with, read by multiplying the identity
    through it (minus the bias): exactly what its kernels produce, whatever packing bitsandbytes chose for the
    device (its CPU kernels repack 4-bit weights in place at the first inference), in the layer's compute dtype."""
    if type(layer) is nn.Linear:
        return layer.weight.detach()
    weight = layer.weight
    dtype = getattr(layer, "compute_dtype", None) or (torch.float16 if weight.dtype == torch.int8 else weight.dtype)
    rows = []
    with torch.no_grad():
        for start in range(0, layer.in_features, chunk):
            size = min(chunk, layer.in_features - start)
            probe = torch.zeros(size, layer.in_features, dtype=dtype, device=weight.device)
            probe[:, start : start + size].fill_diagonal_(1)
            out = layer(probe)
            rows.append(out - layer.bias.to(out.dtype) if layer.bias is not None else out)
    return torch.cat(rows).T.contiguous()


def load_quantized(model: nn.Module, weights) -> None:
    """Copy full-precision named ``weights`` into ``model`` in place, quantizing afresh the bitsandbytes layers they
    fall in (each keeps its kind: 8-bit or 4-bit); every other tensor is copied as it is. How a quantized rollout
    replica takes the policy's new weights."""
    bnb = require_bitsandbytes("rollout.quantization")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, tensor in weights:
            owner, _, leaf = name.rpartition(".")
            if is_quantized(modules.get(owner, nn.Identity())):
                pending.setdefault(owner, {})[leaf] = tensor
            else:
                params[name].copy_(tensor)
    for owner, tensors in pending.items():
        old = modules[owner]
        linear = nn.Linear(old.in_features, old.out_features, bias="bias" in tensors, device="meta")
        linear.weight = nn.Parameter(tensors["weight"].detach(), requires_grad=False)
        if "bias" in tensors:
            linear.bias = nn.Parameter(tensors["bias"].detach(), requires_grad=False)
        bits = "8bit" if type(old).__name__ == "Linear8bitLt" else "4bit"
        parent, _, child = owner.rpartition(".")
        new = _quantized_linear(bnb, linear, bits).to(old.weight.device).train(old.training)
        setattr(modules[parent] if parent else model, child, new)
