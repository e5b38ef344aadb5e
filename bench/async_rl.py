"""Asynchronous RL (ROLL Flash, arXiv:2510.11345): how much rollout–train decoupling gains, against the paper's
bounds.

``simulate``: the discrete-event simulator of ``zoo/rl/async_simulator.py`` (zoo's own sample buffer inside):
``K`` devices, ``N`` samples a step with long-tailed generation times (lognormal, median 1, ``--sigma``, capped at
``--max``), training ``--train`` seconds per sample on one device. Synchronous: all ``K`` devices generate, then
all train (``E·N·μ_train/K``). Asynchronous at ratio α: ``round(β*·K)`` devices train (β* of Proposition 2) while the
others generate. Prints, per ``K`` and α, the time per step, the speedup over synchronous, the mean completion
time per sample beside Proposition 1's bound (``Q = (α+1)·N``), the step time beside Proposition 2's bound, the
mean staleness and the share of generation time wasted on expired samples.

    python bench/async_rl.py simulate
    python bench/async_rl.py simulate --workers 8 16 32 64 --samples 256 --sigma 1.5
"""

from __future__ import annotations

import argparse
import statistics

from zoo.rl.async_simulator import LongTail, proposition_1, proposition_2, simulate


def run_simulation(args: argparse.Namespace) -> None:
    lengths = LongTail(1.0, args.sigma, args.max)
    N, steps = args.samples, args.steps
    print(f"N = {N} samples/step, {steps} steps, lengths lognormal(median 1, sigma {args.sigma}) <= {args.max}, "
          f"training {args.train} s/sample on one device")  # fmt: skip
    header = "K  alpha  trainers  s/step  speedup  s/sample  Prop.1  s/step bound(Prop.2)  staleness  wasted"
    print(header)
    for K in args.workers:
        sync = simulate(K, N, steps, 0, args.train / K, lengths, seed=args.seed)
        mean, longest = statistics.mean(sync.generation_times), max(sync.generation_times)
        sync_bound, span = proposition_1(mean, longest, K, N), statistics.mean(sync.step_generation_times)
        print(f"{K:<3}{0:>5}  {'-':>8}  {sync.time_per_step:6.2f}  {1:7.2f}  "
              f"{span / N:8.3f}  {sync_bound:6.3f}  {'-':>21}  {0:9.2f}  {0:6.1%}")  # fmt: skip
        for alpha in args.alphas:
            bound = proposition_2(mean, longest, args.train, K, N, alpha)
            trainers = min(max(1, round(bound.train_share * K)), K - 1)
            run = simulate(K - trainers, N, steps, alpha, args.train / trainers, lengths, seed=args.seed)
            staleness = sum(s * c for s, c in run.staleness.items()) / sum(run.staleness.values())
            generated = sum(run.generation_times) + run.wasted_time
            per_sample = proposition_1(mean, longest, K - trainers, (alpha + 1) * N)
            print(f"{K:<3}{alpha:>5}  {trainers:>8}  {run.time_per_step:6.2f}  "
                  f"{sync.time_per_step / run.time_per_step:7.2f}  {run.time_per_sample:8.3f}  {per_sample:6.3f}  "
                  f"{bound.time_per_step:21.2f}  {staleness:9.2f}  {run.wasted_time / generated:6.1%}")  # fmt: skip
        print(f"   max speedup (Prop. 2, alpha -> inf): {bound.max_speedup:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="the discrete-event simulator against Propositions 1 and 2")
    sim.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32])
    sim.add_argument("--alphas", type=float, nargs="+", default=[1, 2, 4])
    sim.add_argument("--samples", type=int, default=128)
    sim.add_argument("--steps", type=int, default=50)
    sim.add_argument("--sigma", type=float, default=1.2)
    sim.add_argument("--max", type=float, default=30.0)
    sim.add_argument("--train", type=float, default=0.05)
    sim.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "simulate":
        run_simulation(args)


if __name__ == "__main__":
    main()
