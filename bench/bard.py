"""BARD's experiments (arXiv:2511.01470; notes §4.5) on the thinking task, every arm through the command line.

    python bench/bard.py [--seeds 1337 1 2] [--sft-steps 3000] [--rl-steps 200] [--problems 200] [--workdir DIR]

Per seed: a budget-constrained SFT (``method=bard_sft``) and a budget-agnostic one (the same, ``data.budgets=null``:
whole chains, no control line), each pushed to the hub (ZOO_HUB) as ``bard-sft-SEED`` / ``agnostic-sft-SEED``;
then GRPO under budgets (``method=bard_grpo``) from the budget SFT with the multiplicative reward, with the additive
one (``data.budgets.combine=sum``), and from the budget-agnostic SFT (RL without budget SFT). Every policy is then
asked under each budget (``zoo budget``, ``--problems`` held-out questions, with the truncation baseline), and the
script prints per arm and budget the accuracy, the thinking length and the share within budget (mean over seeds,
then the per-seed values), the correlation of length with budget, and writes the accuracy and length curves of
every arm to WORKDIR/bard.png. ``--reuse`` reports the runs already in the workdir; ``--parallel`` runs (default
2) go side by side, each with its share of the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo_runs import latest_run, threads_per_run, zoo

POLICIES = {"bard-sft": [], "agnostic-sft": ["data.budgets=null"]}  # the two SFTs, pushed as NAME-SEED
ARMS = {  # name: (how it is trained, from which policy)
    "budget SFT": ("bard-sft", None),
    "budget-agnostic SFT": ("agnostic-sft", None),
    "budget SFT + GRPO (correct x fidelity)": ("bard-sft", []),
    "budget SFT + GRPO (correct + fidelity)": ("bard-sft", ["data.budgets.combine=sum"]),
    "budget-agnostic SFT + GRPO (no budget SFT)": ("agnostic-sft", []),
}


def _fit(workdir: Path, name: str, opts, threads: int, *overrides: str) -> Path:
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "fit", *overrides, f"name={name}", "trainer.enable_progress_bar=false")
        run = latest_run(workdir, name)
    return run


def _sft(policy: str, seed: int, opts, threads: int) -> Path:
    workdir, name = Path(opts.workdir).resolve(), f"{policy.replace('-', '_')}_{seed}"
    run = _fit(workdir, name, opts, threads, "method=bard_sft", f"seed={seed}", f"trainer.max_steps={opts.sft_steps}",
               "data.train_size=8000", f"trainer.val_check_interval={opts.sft_steps}", *POLICIES[policy])  # fmt: skip
    zoo(workdir, threads, f"push_{name}.log", "hub", "push", str(run), "--name", f"{policy}-{seed}", "--force")
    return run


def _arm(arm: str, seed: int, opts, threads: int) -> dict:
    """The policy of ``arm`` and ``seed`` (its SFT, or GRPO from it) asked under each budget (``zoo budget``)."""
    workdir, (start, extra) = Path(opts.workdir).resolve(), ARMS[arm]
    if extra is None:
        name, run = f"{start.replace('-', '_')}_{seed}", latest_run(workdir, f"{start.replace('-', '_')}_{seed}")
    else:
        name = f"grpo_{start}_{'sum' if extra else 'product'}_{seed}"
        grpo = ["method=bard_grpo", f"model.init_from=hub:{start}-{seed}", f"seed={seed}",
                f"trainer.max_steps={opts.rl_steps}", *extra]  # fmt: skip
        run = _fit(workdir, name, opts, threads, *grpo)
    out, levels = workdir / "reports" / name, [str(b) for b in opts.levels]
    zoo(workdir, threads, f"report_{name}.log", "budget", str(run), "--problems", str(opts.problems), "--levels",
        *levels, "--out", str(out))  # fmt: skip
    return json.loads((out / "budgets.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--sft-steps", type=int, default=3000)
    parser.add_argument("--rl-steps", type=int, default=200)
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--levels", type=int, nargs="+", default=[20, 32, 48, 64, 96])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    opts = parser.parse_args()
    threads = threads_per_run(opts.parallel)
    with ThreadPoolExecutor(opts.parallel) as pool:
        sfts = [(policy, seed) for seed in opts.seeds for policy in POLICIES]
        list(pool.map(lambda job: _sft(*job, opts, threads), sfts))
        jobs = [(arm, seed) for seed in opts.seeds for arm in ARMS]
        done = dict(zip(jobs, pool.map(lambda job: _arm(*job, opts, threads), jobs), strict=True))
    reports = {arm: [done[arm, seed] for seed in opts.seeds] for arm in ARMS}
    print(f"{len(opts.seeds)} seeds, {opts.problems} held-out questions per budget, greedy")
    print("| arm | budget | accuracy | truncated at b | thinking length | L <= b | length-budget correlation |")
    print("|---|---|---|---|---|---|---|")
    for arm, per_seed in reports.items():
        correlation = statistics.mean(r["length_correlation"] for r in per_seed)
        for i, budget in enumerate(opts.levels):
            rows = [r["levels"][i] for r in per_seed]

            def mean(key: str, rows=rows) -> str:
                values = [row[key] for row in rows]
                return f"{statistics.mean(values):.3f} ({' / '.join(f'{v:.3f}' for v in values)})"

            print(f"| {arm} | {budget} | {mean('accuracy')} | {mean('truncated_accuracy')} | {mean('length')} "
                  f"| {mean('within_budget')} | {correlation:.3f} |")  # fmt: skip
    _plot(reports, opts.levels, Path(opts.workdir).resolve() / "bard.png")
    print(f"plot: {Path(opts.workdir).resolve() / 'bard.png'}")


def _plot(reports: dict[str, list[dict]], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, per_seed in reports.items():
        accuracy = [statistics.mean(r["levels"][i]["accuracy"] for r in per_seed) for i in range(len(levels))]
        length = [statistics.mean(r["levels"][i]["length"] for r in per_seed) for i in range(len(levels))]
        left.plot(levels, accuracy, marker="o", label=arm)
        right.plot(levels, length, marker="o", label=arm)
    truncated = [statistics.mean(r["levels"][i]["truncated_accuracy"] for r in reports["budget SFT"])
                 for i in range(len(levels))]  # fmt: skip
    left.plot(levels, truncated, marker="s", linestyle=":", color="grey", label="budget SFT, truncated at b")
    right.plot(levels, levels, linestyle="--", color="grey", label="L = b")
    left.set_xlabel("thinking budget b (tokens)")
    left.set_ylabel("accuracy (greedy pass@1)")
    right.set_xlabel("thinking budget b (tokens)")
    right.set_ylabel("mean thinking length (tokens)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
