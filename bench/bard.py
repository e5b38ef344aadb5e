"""BARD's experiments (arXiv:2511.01470; notes §4.5) on the thinking task, every arm through the command line.

    python bench/bard.py [--seeds 1337 1 2] [--sft-steps 3000] [--rl-steps 200] [--problems 200] [--workdir DIR]

Per seed: a budget-constrained SFT (``model=bard_sft``) and a budget-agnostic one (the same, ``data.budgets=null``:
whole chains, no control line), each pushed to the hub (ZOO_HUB) as ``bard-sft-SEED`` / ``agnostic-sft-SEED``;
then GRPO under budgets (``model=bard_grpo``) from the budget SFT with the multiplicative reward, with the additive
one (``data.budgets.combine=sum``), and from the budget-agnostic SFT (RL without budget SFT). Every policy is then
asked under each budget (``zoo budget``, ``--problems`` held-out questions, with the truncation baseline), and the
script prints per arm and budget the accuracy, the thinking length and the share within budget (mean over seeds,
then the per-seed values), the correlation of length with budget, and writes the accuracy and length curves of
every arm to WORKDIR/bard.png. ``--reuse`` reports the runs already in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = {  # name: (how it is trained, from which policy)
    "budget SFT": None,
    "budget-agnostic SFT": None,
    "budget SFT + GRPO (correct x fidelity)": ("bard-sft", []),
    "budget SFT + GRPO (correct + fidelity)": ("bard-sft", ["data.budgets.combine=sum"]),
    "budget-agnostic SFT + GRPO (no budget SFT)": ("agnostic-sft", []),
}


def _zoo(workdir: Path, log: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(workdir / log, "w") as out:
        subprocess.run([sys.executable, "-m", "zoo", *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    return (workdir / log).read_text()


def _run_dir(workdir: Path, name: str) -> Path | None:
    found = sorted((workdir / "runs" / name).glob("*/metrics.json"))
    return found[-1].parent if found else None


def _fit(workdir: Path, name: str, reuse: bool, *overrides: str) -> Path:
    run = _run_dir(workdir, name) if reuse else None
    if run is None:
        _zoo(workdir, f"{name}.log", "fit", *overrides, f"name={name}", "trainer.enable_progress_bar=false")
        run = _run_dir(workdir, name)
    return run


def _report(workdir: Path, run: Path, name: str, opts) -> dict:
    out = workdir / "reports" / name
    levels = [str(b) for b in opts.levels]
    _zoo(workdir, f"report_{name}.log", "budget", str(run), "--problems", str(opts.problems), "--levels", *levels,
         "--out", str(out))  # fmt: skip
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
    opts = parser.parse_args()
    workdir = Path(opts.workdir).resolve()
    reports: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in opts.seeds:
        sft = ["model=bard_sft", f"seed={seed}", f"trainer.max_steps={opts.sft_steps}", "data.train_size=8000",
               f"trainer.val_check_interval={opts.sft_steps}"]  # fmt: skip
        policies = {
            "bard-sft": _fit(workdir, f"bard_sft_{seed}", opts.reuse, *sft),
            "agnostic-sft": _fit(workdir, f"agnostic_sft_{seed}", opts.reuse, *sft, "data.budgets=null"),
        }
        for policy, run in policies.items():
            _zoo(workdir, f"push_{policy}_{seed}.log", "hub", "push", str(run), "--name", f"{policy}-{seed}", "--force")
        reports["budget SFT"].append(_report(workdir, policies["bard-sft"], f"bard_sft_{seed}", opts))
        reports["budget-agnostic SFT"].append(_report(workdir, policies["agnostic-sft"], f"agnostic_sft_{seed}", opts))
        for arm, spec in ARMS.items():
            if spec is None:
                continue
            start, extra = spec
            name = f"grpo_{start}_{'sum' if extra else 'product'}_{seed}"
            grpo = ["model=bard_grpo", f"model.init_from=hub:{start}-{seed}", f"seed={seed}",
                    f"module.rollout.seed={seed}", f"trainer.max_steps={opts.rl_steps}", *extra]  # fmt: skip
            run = _fit(workdir, name, opts.reuse, *grpo)
            reports[arm].append(_report(workdir, run, name, opts))
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
    _plot(reports, opts.levels, workdir / "bard.png")
    print(f"plot: {workdir / 'bard.png'}")


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
