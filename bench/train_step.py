"""Training-step throughput: zoo's model against transformers' own class of the family, same config, same process.

Each contender runs its own training step on the same random tokens (T input positions): forward, next-token
cross-entropy (HF: ``labels=``; zoo: ``targets=``, its fused output head), backward, AdamW (fused on CUDA).
Both models hold identical weights. Prints tokens/s of each, the ratio zoo / peer and, on a GPU, MFU against
the measured bf16 matmul ceiling (PaLM count: 6·N + 12·L·H·T FLOPs per token, N the parameters of the blocks
and the output head).

    python bench/train_step.py                                   # CPU, tiny config, fp32
    python bench/train_step.py --model hub:smollm2 --batch 4 --seq 256 --steps 3 --warmup 1   # a Llama entry
    python bench/train_step.py --model pythia-160m --batch 16 --seq 2048 --compile   # GPU, bf16
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import flops_per_token, gpt_neox_pair, hub_pair, matmul_peak, train_throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny, a Pythia preset name, or hub:NAME (a gpt_neox or llama entry)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile zoo's step (and run HF compiled too)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    device, bf16 = args.device, args.device == "cuda"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(0)
    config, peer, ours = (hub_pair if args.model.startswith("hub:") else gpt_neox_pair)(args.model, device)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)

    def zoo_step(t):  # zoo's training path: the fused output head + cross-entropy
        return ours(t[:, :-1], targets=t[:, 1:])

    def hf_step(t):  # transformers' own training path: labels shifted inside, loss over T-1 positions
        return peer(input_ids=t[:, :-1], labels=t[:, :-1]).loss

    results = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    timing = dict(tokens=tokens, steps=args.steps, device=device, bf16=bf16)
    results["hf_eager"] = train_throughput(hf_step, peer.parameters(), warmup=args.warmup, **timing)
    results["zoo_eager"] = train_throughput(zoo_step, ours.parameters(), warmup=args.warmup, **timing)
    if args.compile:  # the first calls compile: two more warm-up steps
        compiled = dict(warmup=args.warmup + 2, **timing)
        results["hf_compiled"] = train_throughput(torch.compile(hf_step), peer.parameters(), **compiled)
        results["zoo_compiled"] = train_throughput(torch.compile(zoo_step), ours.parameters(), **compiled)
    peak = matmul_peak(device) if device == "cuda" and config.arch == "gpt_neox" else None  # MFU: NeoX's count
    c = config
    fpt = flops_per_token(c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers, args.seq)
    print(
        f"\n{args.model} batch {args.batch} x seq {args.seq} on {results['gpu'] or 'CPU'} "
        f"({'bf16 autocast' if bf16 else 'fp32'}, {results['threads']} threads)"
    )
    print(f"{'contender':14s} {'tokens/s':>12s} {'vs HF eager':>12s} {'MFU':>7s}")
    for key in [k for k in ("hf_eager", "hf_compiled", "zoo_eager", "zoo_compiled") if k in results]:
        mfu = f"{100 * results[key] * fpt / peak:6.1f}%" if peak else "    -"
        print(f"{key:14s} {results[key]:12,.0f} {results[key] / results['hf_eager']:11.2f}x {mfu}")
    best_zoo = max(results.get("zoo_compiled", 0), results["zoo_eager"])
    results["ratio"] = best_zoo / results["hf_eager"]
    results["peak_tflops"] = peak / 1e12 if peak else None
    print(f"ratio zoo / HF eager: {results['ratio']:.2f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
