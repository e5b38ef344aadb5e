"""Timing helpers shared by the benchmarks in this folder (run them as ``python bench/<name>.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from transformers import GPTNeoXConfig as HFConfig
from transformers import GPTNeoXForCausalLM

from zoo.hub.convert import gpt_neox_config_to_hf, gpt_neox_state_dict_from_hf
from zoo.models import GPTNeoX, GPTNeoXConfig
from zoo.models.gpt_neox import PRESETS

# The CPU benchmarks' model: Pythia-14M's width at 4 blocks with a 4,096-token vocabulary.
TINY = GPTNeoXConfig(
    vocab_size=4096,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=512,
    max_position_embeddings=2048,
)


def gpt_neox_pair(name: str, device: str, dtype: torch.dtype = torch.float32):
    """transformers' GPTNeoXForCausalLM (sdpa attention) and zoo's GPTNeoX holding the same random weights,
    for ``tiny`` or a Pythia preset name; returns (config, transformers model, zoo model)."""
    config = TINY if name == "tiny" else PRESETS[name]
    hf_config = HFConfig(**{k: v for k, v in gpt_neox_config_to_hf(config).items() if k != "torch_dtype"})
    hf_config._attn_implementation = "sdpa"
    peer = GPTNeoXForCausalLM(hf_config).to(device=device, dtype=dtype)
    ours = GPTNeoX(config).to(device=device, dtype=dtype)
    ours.load_state_dict(gpt_neox_state_dict_from_hf(peer.state_dict()))
    return config, peer, ours


def hub_pair(name: str, device: str, dtype: torch.dtype = torch.float32):
    """zoo's model of a hub entry (``hub:NAME``: a gpt_neox or llama entry, its real weights) and transformers' own
    class of the family (sdpa attention) holding the same weights; returns (config, transformers model, zoo model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from zoo.hub.convert import config_to_hf, state_dict_to_hf
    from zoo.hub.store import resolve_entry

    entry = resolve_entry(name)
    ours = entry.build_model()
    values = {k: v for k, v in config_to_hf(ours.config).items() if k not in ("torch_dtype", "architectures")}
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    hf_config._attn_implementation = "sdpa"
    peer = AutoModelForCausalLM.from_config(hf_config)
    peer.load_state_dict(state_dict_to_hf(entry.state_dict(), ours.config), strict=not ours.config.tie_word_embeddings)
    return ours.config, peer.to(device=device, dtype=dtype), ours.to(device=device, dtype=dtype)


def train_throughput(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    tokens: torch.Tensor,
    steps: int,
    warmup: int,
    device: str,
    bf16: bool,
) -> float:
    """Tokens per second of training steps (loss, backward, AdamW — fused on CUDA) on ``tokens`` (B, T + 1)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda" or None)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (tokens.shape[1] - 1) * tokens.shape[0] * steps / (time.perf_counter() - start)


def matmul_peak(device: str) -> float:
    """Measured bf16 matmul FLOP/s (8192³ products), the denominator of MFU."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ a
    torch.cuda.synchronize()
    return n * 2 * 8192**3 / (time.perf_counter() - start)


def flops_per_token(hidden: int, intermediate: int, vocab: int, compute_layers: int, seq: int) -> float:
    """PaLM's count: 6·N + 12·L·H·T, N the parameters of the applied blocks and the output head."""
    n = compute_layers * (4 * hidden**2 + 2 * hidden * intermediate) + vocab * hidden
    return 6 * n + 12 * compute_layers * hidden * seq
