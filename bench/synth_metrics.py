"""DESIGNER's diversity metrics at scale (zoo/synth/metrics.py): each metric's time on N x d embeddings, and a
check against a brute-force peer in the same process on the first ``--check`` rows (the full N x N matrix at
once: torch.cdist for L2, the cosine matrix for mean cosine and 1-NN), with its time and the ratio.

The embeddings are clustered random vectors (``--clusters`` Gaussian centres, unit-normalised, like sentence
embeddings), or ``--embeddings FILE.pt`` of your own.

    python bench/synth_metrics.py --n 300000 --dim 384               # GPU when there is one
    python bench/synth_metrics.py --n 20000 --dim 384 --check 8000   # CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo.synth import metrics  # noqa: E402


def clustered(n: int, dim: int, clusters: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    labels = torch.randint(clusters, (n,), generator=g)
    x = centres[labels] + 0.8 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(device)


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def brute_force(x: torch.Tensor) -> dict[str, float]:
    n = len(x)
    x = x.double()
    unit = torch.nn.functional.normalize(x, dim=1)
    cosine = unit @ unit.T
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1)
    mean_cosine = float((1 - cosine[upper]).mean())
    cosine.fill_diagonal_(-torch.inf)
    nearest = float((1 - cosine.max(1).values).mean())
    del cosine
    mean_l2 = float(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")[upper].mean())
    return {"mean_cosine_distance": mean_cosine, "mean_l2_distance": mean_l2, "nearest_neighbour_distance": nearest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--k", type=int, default=16, help="K-means clusters of the inertia")
    parser.add_argument("--embeddings", help="a .pt file holding an (N, d) tensor instead of random vectors")
    parser.add_argument("--dtype", choices=["float32", "float64"], nargs="+", default=["float32", "float64"])
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--check", type=int, default=20_000, help="rows compared against brute force (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    device = args.device
    x = (
        torch.load(args.embeddings).to(device)
        if args.embeddings
        else clustered(args.n, args.dim, args.clusters, 0, device)
    )
    n, dim = x.shape
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{n:,} x {dim} embeddings on {where}")
    results: dict = {"n": n, "dim": dim, "device": where}
    for name in args.dtype:
        dtype = getattr(torch, name)
        row = {}
        for metric, fn in (
            ("mean_cosine_distance", lambda: metrics.mean_cosine_distance(x)),
            ("mean_l2_distance", lambda dtype=dtype: metrics.mean_l2_distance(x, args.chunk, dtype)),
            (
                "nearest_neighbour_distance",
                lambda dtype=dtype: metrics.nearest_neighbour_distance(x, args.chunk, dtype),
            ),
            ("kmeans_inertia", lambda: metrics.kmeans_inertia(x, args.k)),
            ("radius", lambda: metrics.radius(x)),
        ):
            value, seconds = timed(fn, device)
            row[metric] = {"value": value, "seconds": round(seconds, 3)}
            print(f"  {name:8s} {metric:28s} {value:14.6f}  {seconds:8.2f} s")
        results[name] = row
    if args.check:
        sub = x[: args.check]
        peer, peer_seconds = timed(lambda: brute_force(sub), device)
        ours, our_seconds = timed(
            lambda: {
                "mean_cosine_distance": metrics.mean_cosine_distance(sub),
                "mean_l2_distance": metrics.mean_l2_distance(sub, args.chunk),
                "nearest_neighbour_distance": metrics.nearest_neighbour_distance(sub, args.chunk),
            },
            device,
        )
        worst = max(abs(ours[m] - peer[m]) for m in peer)
        print(
            f"  brute force on the first {len(sub):,} rows (float64, whole matrices): {peer_seconds:.2f} s; "
            f"zoo's chunked float64: {our_seconds:.2f} s ({peer_seconds / our_seconds:.2f}x); "
            f"largest difference {worst:.2e}"
        )
        results["check"] = {
            "rows": len(sub),
            "peer_seconds": peer_seconds,
            "zoo_seconds": our_seconds,
            "max_diff": worst,
        }
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
