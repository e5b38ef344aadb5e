"""What a LoRA policy's rollout engine costs, beside a full-parameter policy's (the peer), in one process: the
weight sync (``WeightSync.weights`` into the native engine's replica: every weight, the merged weights
``W + (alpha / r) B A``, or the adapters alone under ``rollout.lora_sync=adapters``), the bytes each sync sends,
and the replica's decode throughput (a plain network, or one that applies the adapters).

    python bench/lora_sync.py                                    # CPU: Pythia-160M, rank 16, 8 rows x 32 new tokens
    python bench/lora_sync.py --batch 64 --new 256 --dtype bf16  # GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.generation.native import NativeEngine  # noqa: E402
from zoo.generation.sampling import SamplingParams  # noqa: E402
from zoo.models import GPTNeoX  # noqa: E402
from zoo.models.gpt_neox import PRESETS  # noqa: E402
from zoo.rollout.weights import WeightSync  # noqa: E402
from zoo.training.lora import apply_lora, lora_layers, lora_settings  # noqa: E402


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, policy: torch.nn.Module, sync: str, args) -> dict:
    weight_sync = WeightSync(lora_sync=sync)
    module = SimpleNamespace(model=policy, device=torch.device(args.device))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    engine = NativeEngine(weight_sync.replica(module), dtype=dtype)
    sync_times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        engine.load_weights(weight_sync.weights(module))  # as the rollout callback syncs: one tensor at a time
        synchronize(args.device)
        sync_times.append(time.perf_counter() - start)
    sent = sum(t.numel() * t.element_size() for _, t in weight_sync.weights(module))
    prompts = torch.randint(0, policy.config.vocab_size, (args.batch, args.prompt)).tolist()
    params = SamplingParams(args.new, 1.0, seed=0)
    with engine.serving():
        engine.generate(prompts[:2], 1, SamplingParams(4, 1.0, seed=0))  # warm-up
        synchronize(args.device)
        start = time.perf_counter()
        result = engine.generate(prompts, 1, params)
        synchronize(args.device)
        seconds = time.perf_counter() - start
    return {
        "arm": name,
        "sync_s": statistics.median(sync_times),
        "sent_bytes": sent,
        "tokens_per_s": result.generated_tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pythia-160m", choices=sorted(PRESETS))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the engine's dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    full = GPTNeoX(PRESETS[args.model]).to(args.device)
    adapted = GPTNeoX(PRESETS[args.model]).to(args.device)
    adapted.load_state_dict(full.state_dict())
    apply_lora(adapted, lora_settings({"r": args.rank, "alpha": 2 * args.rank}))
    for layer in lora_layers(adapted).values():  # trained adapters: B is no longer zero
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.01)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, LoRA rank {args.rank}, {args.batch} rows x {args.new} new tokens, {args.dtype}, {where}")
    results = [
        measure("full parameters", full, "merged", args),
        measure("LoRA, merged", adapted, "merged", args),
        measure("LoRA, adapters", adapted, "adapters", args),
    ]
    base = results[0]
    print(f"{'arm':18s} {'sync s':>8s} {'sent MiB':>9s} {'decode tok/s':>13s}")
    for r in results:
        print(f"{r['arm']:18s} {r['sync_s']:8.3f} {r['sent_bytes'] / 2**20:9.1f} {r['tokens_per_s']:13,.0f}")
    for r in results[1:]:
        print(
            f"{r['arm']}: sync {r['sync_s'] / base['sync_s']:.2f}x, sent {r['sent_bytes'] / base['sent_bytes']:.3f}x,"
            f" decode {r['tokens_per_s'] / base['tokens_per_s']:.2f}x of the full-parameter policy's"
        )


if __name__ == "__main__":
    main()
