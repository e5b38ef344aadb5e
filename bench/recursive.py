"""Training throughput of the recursive family, same process, same tokens:

- MeSH against the recursive base model of the same layout: the cost of the memory buffer and routers
  (targets: overhead ≤ 5% on a GPU, ≤ 10% on a CPU);
- the recursive model against a vanilla Pythia of the same compute depth (L_pre + L_core·N_loop + L_coda
  blocks): equal FLOPs per token, fewer parameters.

    python bench/recursive.py                                         # CPU: d=128, 1+2R2+1 vs 6 blocks, fp32
    python bench/recursive.py --size 160m --batch 16 --seq 2048 --compile   # GPU, bf16: 2+4R2+2 vs 12 blocks
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import flops_per_token, matmul_peak, train_throughput

from zoo.models import GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig, RecursiveConfig, RecursiveGPTNeoX
from zoo.models.mesh import PRESETS as MESH

TINY = dict(vocab_size=4096, hidden_size=128, num_attention_heads=4, intermediate_size=512)


def contenders(size: str) -> dict[str, torch.nn.Module]:
    if size == "tiny":
        dims, layout = TINY, "1+2R2+1"
    else:
        preset = MESH[f"mesh-{size}"].to_dict()
        layout = preset.pop("layout")
        dims = {k: v for k, v in preset.items() if k not in ("arch", "buffer_slots", "scale_embeddings")}
    recursive = RecursiveConfig(**dims, layout=layout)
    return {
        "vanilla": GPTNeoX(GPTNeoXConfig(**dims, num_hidden_layers=recursive.num_compute_layers)),
        "recursive": RecursiveGPTNeoX(recursive),
        "mesh": MeSH(MeSHConfig(**dims, layout=layout)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="tiny, or a MeSH paper size: 160m, 410m, 410m-r3, 1b, 1.4b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="measure every contender this many times, keep the best")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    device, bf16 = args.device, args.device == "cuda"
    torch.manual_seed(0)
    models = {name: model.to(device) for name, model in contenders(args.size).items()}
    vocab = next(iter(models.values())).config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), device=device)
    steps = {}
    for name, model in models.items():
        step = (lambda m: lambda t: m(t[:, :-1], targets=t[:, 1:]))(model)
        steps[name] = torch.compile(step) if args.compile else step
    warmup = args.warmup + (2 if args.compile else 0)
    rates = {name: 0.0 for name in models}
    for _ in range(args.rounds):  # interleaved rounds: a slow spell of the machine hits every contender
        for name, model in models.items():
            rate = train_throughput(steps[name], model.parameters(), tokens, args.steps, warmup, device, bf16)
            rates[name] = max(rates[name], rate)
        warmup = 1
    mesh_config = models["mesh"].config
    c = mesh_config
    fpt = flops_per_token(c.hidden_size, c.intermediate_size, c.vocab_size, c.num_compute_layers, args.seq)
    peak = matmul_peak(device) if device == "cuda" else None
    label = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\n{args.size}: {c.layout} vs {c.num_compute_layers} blocks, batch {args.batch} x seq {args.seq}, "
        f"{label}, {'bf16' if bf16 else 'fp32'}{', compiled' if args.compile else ''}"
    )
    print(f"{'model':10s} {'parameters':>13s} {'tokens/s':>12s} {'MFU':>7s}")
    for name, model in models.items():
        mfu = f"{100 * rates[name] * fpt / peak:6.1f}%" if peak else "    -"
        print(f"{name:10s} {sum(p.numel() for p in model.parameters()):13,d} {rates[name]:12,.0f} {mfu}")
    overhead = 1 - rates["mesh"] / rates["recursive"]
    print(
        f"MeSH overhead vs recursive base: {100 * overhead:.1f}% (mesh / recursive = "
        f"{rates['mesh'] / rates['recursive']:.3f})"
    )
    print(f"recursive / vanilla of the same compute depth: {rates['recursive'] / rates['vanilla']:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            record = {
                "size": args.size,
                "batch": args.batch,
                "seq": args.seq,
                "device": label,
                "compile": args.compile,
                "tokens_per_s": rates,
                "mesh_overhead": overhead,
            }
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
