"""Training memory and step time by arm, on the same model, data and steps, in one process: full training with
torch's AdamW, bitsandbytes' AdamW8bit and PagedAdamW8bit (``module.optim.name``), LoRA (``model.lora.r``) and
QLoRA (``model.lora.quantize=4bit``: the frozen base in NF4) with AdamW on the adapters; and the memory of a frozen
reference policy in full precision, 8-bit and 4-bit (``module.algorithm.reference_quantization``).

Reports the optimizer state's bytes (every tensor it holds, counted exactly), the parameters' bytes (as stored:
a 4-bit weight is half a byte), the gradients' bytes, the peak memory the device allocator saw during the steps
(CUDA only: the CPU allocator keeps no peak), the median step time and the last loss.

    python bench/memory.py --model pythia-160m --batch 2 --seq 128             # CPU, reduced sequence length
    python bench/memory.py --model pythia-410m --batch 8 --seq 2048 --bf16     # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.models import GPTNeoX  # noqa: E402
from zoo.models.gpt_neox import PRESETS  # noqa: E402
from zoo.training.lora import apply_lora, lora_settings  # noqa: E402
from zoo.training.optim import OptimConfig, build_adamw  # noqa: E402
from zoo.training.quantization import quantize_frozen  # noqa: E402

ARMS = {  # arm: (module.optim.name, model.lora.quantize or None when no adapters, with adapters)
    "adamw": ("adamw", None, False),
    "adamw8bit": ("adamw8bit", None, False),
    "paged_adamw8bit": ("paged_adamw8bit", None, False),
    "lora": ("adamw", None, True),
    "qlora": ("adamw", "4bit", True),
}


def tensor_bytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


def measure(arm: str, args, tokens: torch.Tensor) -> dict:
    torch.manual_seed(0)
    optimizer_name, quantize, adapters = ARMS[arm]
    model = GPTNeoX(PRESETS[args.model]).to(args.device)
    if adapters:
        settings = {"r": args.lora_r, "alpha": 2 * args.lora_r, "quantize": quantize}
        apply_lora(model, lora_settings(settings))
    optimizer = build_adamw(model, OptimConfig(name=optimizer_name, lr=1e-4))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    params = list(model.parameters())
    result = {
        "arm": arm,
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "state_bytes": sum(tensor_bytes(s) for s in optimizer.state.values()),
        "parameter_bytes": sum(tensor_bytes(p) for p in params),
        "gradient_bytes": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "step_s": statistics.median(times),
        "loss": float(loss.detach()),
    }
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return result


def reference_bytes(args) -> dict[str, int]:
    """The parameter bytes of a frozen reference policy held in full precision (the training dtype), 8-bit, 4-bit."""
    sizes = {}
    for bits in (None, "8bit", "4bit"):
        torch.manual_seed(0)
        model = GPTNeoX(PRESETS[args.model]).to(args.device)
        if args.bf16:
            model = model.to(torch.bfloat16)
        if bits is not None:
            quantize_frozen(model, bits)
        sizes[bits or ("bfloat16" if args.bf16 else "float32")] = sum(tensor_bytes(p) for p in model.parameters())
        del model
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pythia-160m", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--lora-r", type=int, default=16, help="the adapters' rank (alpha = 2r)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    tokens = torch.randint(0, PRESETS[args.model].vocab_size, (args.batch, args.seq + 1), device=args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, {args.batch} x {args.seq}, {where}")
    print(
        f"{'arm':16s} {'trained':>11s} {'state MiB':>10s} {'params MiB':>11s} {'grads MiB':>10s} {'total MiB':>10s} "
        f"{'peak MiB':>9s} {'step s':>7s}"
    )
    results = [measure(arm, args, tokens) for arm in args.arms]
    mib = 2**20
    for r in results:
        r["total_bytes"] = r["state_bytes"] + r["parameter_bytes"] + r["gradient_bytes"]
        peak = f"{r['peak_bytes'] / mib:9.0f}" if r["peak_bytes"] is not None else f"{'-':>9s}"
        print(
            f"{r['arm']:16s} {r['trainable']:11,d} {r['state_bytes'] / mib:10.1f} {r['parameter_bytes'] / mib:11.1f} "
            f"{r['gradient_bytes'] / mib:10.1f} {r['total_bytes'] / mib:10.1f} {peak} {r['step_s']:7.2f}"
        )
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['arm']}: optimizer state {r['state_bytes'] / base['state_bytes']:.3f}x, state + parameters + "
            f"gradients {r['total_bytes'] / base['total_bytes']:.3f}x, step time {r['step_s'] / base['step_s']:.2f}x "
            f"of {base['arm']}'s"
        )
    references = reference_bytes(args)
    full = next(iter(references.values()))
    print("frozen reference: " + ", ".join(f"{k} {v / mib:.1f} MiB ({v / full:.3f}x)" for k, v in references.items()))
    if args.json:
        record = {"model": args.model, "batch": args.batch, "seq": args.seq, "results": results}
        with open(args.json, "a") as f:
            f.write(json.dumps({**record, "reference_bytes": references}) + "\n")


if __name__ == "__main__":
    main()
