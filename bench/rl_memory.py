"""Peak memory of one GRPO update against the rollout batch's size and response length, unsplit and in micro-batches
(``module.algorithm.micro_batch_tokens``), padded and packed (``padding_free``), with and without
``model.gradient_checkpointing``, at the shapes of Pythia-160M and SmolLM2-135M (random weights).

The update is :class:`zoo.modules.grpo.GRPOModule`'s own: ``start_minibatch``, then ``loss`` and backward per
micro-batch (:meth:`RolloutBatch.micro_batches` with the module's settings), as ``RLModule.update`` runs it without
Lightning around it. The batch is synthetic: a prompt of ``--prompt`` tokens and completions whose lengths are
long-tailed up to ``--response`` (a quarter at the limit, the rest uniform below it), seeded.

Measured by :class:`zoo.analysis.tensor_memory.DeviceMemory` (on a GPU the allocator's counters; on the CPU, whose
allocator keeps no peak, ``TensorMemory``, which follows every tensor storage created until it is freed), above the
parameters the update starts with: the peak of tensor memory over the forward and backward passes
(activations, the gradients, which end at 4 bytes a parameter, and temporaries), and the activations, the memory a
micro-batch's forward leaves for its backward (the largest of the micro-batches), per real token. The optimizer step
(AdamW: 8 bytes of state a parameter) is the same in every arm and left out. From the per-token activation bytes
measured here, ``--papers`` prints the memory per GPU of the papers' settings (Qwen2.5-1.5B and 7B, 512 sequences
of 4K tokens a step, FSDP over 8 GPUs) by formula.

    python bench/rl_memory.py --shape pythia-160m --rows 4 8 16 --response 256
    python bench/rl_memory.py --shape smollm2-135m --rows 8 --response 128 512 --papers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.analysis.tensor_memory import DeviceMemory  # noqa: E402
from zoo.models.gpt_neox import PRESETS  # noqa: E402
from zoo.modules.grpo import GRPOModule  # noqa: E402
from zoo.rl.rollout import LOGITS_PER_CHUNK, RolloutBatch  # noqa: E402

SHAPES = {
    "pythia-160m": PRESETS["pythia-160m"].to_dict(),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}  # fmt: skip

ARMS = {  # name: (micro-batches, padding-free, gradient checkpointing)
    "unsplit": (False, False, False),
    "packed": (False, True, False),
    "micro": (True, False, False),
    "micro+packed": (True, True, False),
    "micro+packed+ckpt": (True, True, True),
}


def synthetic_batch(rows: int, prompt: int, response: int, vocab: int, seed: int = 0) -> RolloutBatch:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, response // 8), response + 1, (rows,), generator=generator)
    lengths[torch.rand(rows, generator=generator) < 0.25] = response  # the long tail at the limit
    width = prompt + response
    input_ids = torch.randint(1, vocab, (rows, width), generator=generator)
    mask = torch.zeros(rows, width - 1)
    for row, n in enumerate(lengths.tolist()):
        input_ids[row, prompt + n :] = 0
        mask[row, prompt - 1 : prompt - 1 + n] = 1
    batch = RolloutBatch(input_ids, mask, torch.zeros_like(mask), torch.arange(rows) // 4)
    batch.rewards = torch.randn(rows, generator=generator)
    batch.advantages = torch.randn(rows, 1, generator=generator) * mask
    return batch


def measure(shape: str, rows: int, prompt: int, response: int, arm: str, args) -> dict:
    micro, packed, checkpointing = ARMS[arm]
    torch.manual_seed(0)
    model = {**SHAPES[shape], "gradient_checkpointing": checkpointing}
    algorithm = dict(micro_batch_tokens=args.micro_batch_tokens if micro else None, padding_free=packed)
    module = GRPOModule(model, rollout=dict(n=4, max_new_tokens=response), algorithm=algorithm)
    module.configure_model()
    module.to(args.device).train()
    batch = synthetic_batch(rows, prompt, response, SHAPES[shape]["vocab_size"]).to(args.device)
    start = time.perf_counter()
    held = []  # after each micro-batch's forward: what its backward needs (activations), and its real tokens
    with DeviceMemory(torch.device(args.device)) as memory:
        module.start_minibatch(batch)
        parts = batch.micro_batches(**module.micro_batching)
        for part in parts:
            before = memory.now()
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
                loss, _ = module.loss(part)
            held.append((memory.now() - before, int(part.lengths().sum())))
            loss.backward()
            del loss
    seconds = time.perf_counter() - start
    activations, tokens_held = max(held)
    parameters = sum(p.numel() for p in module.model.parameters())
    return {
        "shape": shape,
        "rows": rows,
        "prompt": prompt,
        "response": response,
        "arm": arm,
        "micro_batches": len(parts),
        "tokens": int(batch.lengths().sum()),
        "padded_tokens": rows * batch.input_ids.shape[1],
        "peak_mib": memory.peak / 2**20,
        "activation_mib": activations / 2**20,
        "gradient_mib": 4 * parameters / 2**20,
        "bytes_per_token": activations / tokens_held,
        "parameters": parameters,
        "seconds": seconds,
    }


# Qwen2.5 configs: https://huggingface.co/Qwen/Qwen2.5-1.5B/blob/main/config.json and .../Qwen2.5-7B/...
PAPER_MODELS = {
    "Qwen2.5-1.5B": dict(params=1.54e9, layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, vocab=151936),
    "Qwen2.5-7B": dict(params=7.62e9, layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064),
}


def layer_activation_units(hidden: int, intermediate: int, heads: int, kv_heads: int) -> float:
    """Values a Llama-family block keeps per token for its backward pass (no recomputation): the two RMSNorms'
    inputs and outputs (4h), q and the rotated q, k (2h + 4 kv), v (kv), the attention output and o_proj's input
    (2h), the MLP's gate and up outputs, the activation and the product (4 i)."""
    kv = hidden // heads * kv_heads
    return 8 * hidden + 5 * kv + 4 * intermediate


def papers_table(measured: dict, gpus: int = 8, sequences: int = 512, length: int = 4096, budget: int = 16384) -> str:
    """Memory per GPU of a GRPO update at the papers' settings, by formula, its activation term calibrated by the
    SmolLM2-shaped measurement (bytes per token per layer measured / the formula's values per token per layer)."""
    smol = SHAPES["smollm2-135m"]
    units = layer_activation_units(smol["hidden_size"], smol["intermediate_size"], smol["num_attention_heads"],
                                   smol["num_key_value_heads"])  # fmt: skip
    per_value = measured["bytes_per_token"] / (smol["num_hidden_layers"] * units)  # bytes per kept value (fp32)
    value_bytes = per_value / 2  # bf16 autocast: assumed half, not measured
    gib = 2**30
    lines = [
        f"calibration: {measured['bytes_per_token'] / 2**10:.0f} KiB per token measured at the SmolLM2 shape "
        f"(fp32, {measured['tokens']} tokens unsplit) = {per_value:.2f} bytes per value the formula counts; "
        f"bf16 taken as half ({value_bytes:.2f})",
        f"{sequences} sequences x {length} tokens a step, FSDP over {gpus} GPUs ({sequences // gpus} sequences, "
        f"{sequences // gpus * length} tokens per GPU); micro-batches of {budget} tokens",
        "| model | params + grads + AdamW (fp32, sharded) | activations, unsplit | one micro-batch | micro-batch + "
        "checkpointing | total: states + micro-batch + checkpointing | fp32 logits of a micro-batch, unchunked |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in PAPER_MODELS.items():
        states = 16 * m["params"] / gpus  # fp32 master weights 4 + gradients 4 + AdamW 8, sharded
        layer = layer_activation_units(m["hidden"], m["intermediate"], m["heads"], m["kv_heads"]) * value_bytes
        unsplit = sequences // gpus * length * m["layers"] * layer
        micro = budget * m["layers"] * layer
        checkpointed = budget * (m["layers"] * m["hidden"] * 2 + layer)  # every block's bf16 input, one block's rest
        logits = budget * m["vocab"] * 4
        lines.append(
            f"| {name} | {states / gib:.1f} GiB | {unsplit / gib:,.0f} GiB | {micro / gib:.0f} GiB | "
            f"{checkpointed / gib:.1f} GiB | {(states + checkpointed) / gib:.1f} GiB | {logits / gib:.1f} GiB "
            f"(zoo: chunks of {LOGITS_PER_CHUNK * 4 / 2**20:.0f} MiB) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="pythia-160m")
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, nargs="+", default=[256])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--micro-batch-tokens", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (a GPU's setting)")
    parser.add_argument("--papers", action="store_true", help="the papers' per-GPU table, from a SmolLM2 row")
    parser.add_argument("--json", help="append each row to this JSON-lines file")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, shape {args.shape}, "
          f"micro_batch_tokens {args.micro_batch_tokens}")  # fmt: skip
    print("| rows | response | arm | micro | tokens real / padded | peak MiB | activations MiB | KiB/token | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for response in args.response:
        for rows in args.rows:
            for arm in args.arms:
                r = measure(args.shape, rows, args.prompt, response, arm, args)
                results.append(r)
                print(f"| {rows} | {response} | {arm} | {r['micro_batches']} | {r['tokens']} / {r['padded_tokens']} "
                      f"| {r['peak_mib']:.0f} | {r['activation_mib']:.0f} | {r['bytes_per_token'] / 2**10:.1f} "
                      f"| {r['seconds']:.1f} |", flush=True)  # fmt: skip
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    if args.papers:
        unsplit = [r for r in results if r["shape"] == "smollm2-135m" and r["arm"] == "unsplit"]
        if not unsplit:
            raise SystemExit("--papers needs an unsplit row at --shape smollm2-135m")
        print(papers_table(max(unsplit, key=lambda r: r["tokens"])))


if __name__ == "__main__":
    main()
