"""Rollout throughput: zoo's native engine against transformers' ``generate`` on the same model and prompts.

Both sample (temperature 1) ``--new`` tokens for every row of a batch of ``--batch`` random prompts of
``--prompt`` tokens, with no stop token, so both produce exactly batch × new tokens; the weights are shared
(transformers' model loaded into zoo's through ``zoo.convert``). Prints new tokens/s of each and the ratio.

    python bench/rollout.py                                            # CPU, tiny model
    python bench/rollout.py --model pythia-160m --batch 64 --prompt 128 --new 512 --dtype bf16   # GPU
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from timing import gpt_neox_pair

from zoo.generation import NativeEngine, SamplingParams


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    device, dtype = args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    config, peer, ours = gpt_neox_pair(args.model, device, dtype)
    peer.eval()
    ours.eval()
    prompts = torch.randint(2, config.vocab_size, (args.batch, args.prompt), device=device)
    engine = NativeEngine(ours)
    params = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=0)

    def hf():
        with torch.no_grad():
            out = peer.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                pad_token_id=0,
            )
        assert out.shape[1] == args.prompt + args.new

    def native():
        result = engine.generate(prompts.tolist(), 1, params)
        assert result.generated_tokens == args.batch * args.new

    for fn in (hf, native):  # warm-up: allocator, kernels
        fn()
    seconds = {name: min(timed(fn, device) for _ in range(2)) for name, fn in (("hf_generate", hf), ("native", native))}
    tokens = args.batch * args.new
    rates = {name: tokens / s for name, s in seconds.items()}
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.model}, batch {args.batch}, {args.prompt} prompt + {args.new} new tokens, {args.dtype}, {where}")
    for name, rate in rates.items():
        print(f"{name:12s} {rate:12,.0f} new tokens/s")
    print(f"ratio native / transformers generate: {rates['native'] / rates['hf_generate']:.2f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({**vars(args), "device_name": where, "tokens_per_s": rates}) + "\n")


if __name__ == "__main__":
    main()
