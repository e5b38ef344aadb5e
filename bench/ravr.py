"""RAVR's experiment (arXiv:2510.25206; notes §5.6) on the hidden-methods task, every arm through the command line.

    python bench/ravr.py [--seeds 1337 1 2] [--parallel 2] [--workdir DIR] [--reuse]

First the SFT policy that knows the eight methods and how to name the one an answer shows, but not which method a
keyword calls for (``zoo fit experiment=methods_sft``, pushed to the hub, ZOO_HUB, as ``methods-sft``), asked
greedily on the held-out prompts (``zoo validate``: the curves' step 0). Then per seed and arm, from that policy,
100 steps of 16 prompts: GRPO with 8 and with 24 completions per prompt (``experiment=methods_grpo``), RAVR with 4
prior and 4 posterior paths per prompt (``experiment=methods_ravr``: 8 completions per prompt) and RAVR with its
prior update alone (``module.ravr.posterior_weight=0``). The script prints per arm the held-out greedy pass@1 (256
prompts, each run's validation every 20 steps) at every validation, with the rollouts consumed by then, as the
mean ± std over seeds and per seed, and draws pass@1 against rollouts and against steps into WORKDIR/ravr.png.
``--reuse`` reports the runs already in the workdir; ``--parallel`` runs (default 2) go side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo_runs import latest_run, scalars, threads_per_run, zoo

PROMPTS = 16  # per step (the experiments' data.batch_size)
ARMS = {  # name: (experiment, completions per prompt, overrides)
    "GRPO, 8 rollouts": ("methods_grpo", 8, ["module.rollout.n=8"]),
    "GRPO, 24 rollouts": ("methods_grpo", 24, ["module.rollout.n=24"]),
    "RAVR, 8 rollouts (4 prior + 4 posterior)": ("methods_ravr", 8, ["module.rollout.n=4"]),
    "RAVR, 8 rollouts, prior update only": ("methods_ravr", 8, ["module.rollout.n=4", "module.ravr.posterior_weight=0"]),  # noqa: E501
}  # fmt: skip


def _sft(workdir: Path, opts, threads: int) -> float:
    """Train and push methods-sft (unless --reuse finds the run), and its greedy pass@1 on the RL prompts."""
    run = latest_run(workdir, "methods_sft") if opts.reuse else None
    if run is None:
        zoo(workdir, threads, "methods_sft.log", "fit", "experiment=methods_sft", "trainer.enable_progress_bar=false")
        run = latest_run(workdir, "methods_sft")
    zoo(workdir, threads, "push_methods_sft.log", "hub", "push", str(run), "--name", "methods-sft", "--force")
    zoo(workdir, threads, "validate_methods_sft.log", "validate", "experiment=methods_grpo", "name=validate_sft",
        "trainer.enable_progress_bar=false")  # fmt: skip
    return json.loads((latest_run(workdir, "validate_sft") / "metrics.json").read_text())["val/pass@1"]


def _arm(arm: str, seed: int, opts, threads: int) -> tuple[list[int], list[float]]:
    """The held-out pass@1 curve (steps, values) of ``arm`` and ``seed``; checks the rollouts it consumed."""
    workdir, (experiment, per_prompt, extra) = Path(opts.workdir).resolve(), ARMS[arm]
    name = f"{experiment}_{per_prompt}_{'prior_only_' if 'prior update only' in arm else ''}{seed}"
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "fit", f"experiment={experiment}", f"seed={seed}", f"name={name}", *extra,
            "trainer.enable_progress_bar=false")  # fmt: skip
        run = latest_run(workdir, name)
    final = json.loads((run / "metrics.json").read_text())
    if final["train/rollouts"] != final["global_step"] * PROMPTS * per_prompt:
        raise RuntimeError(f"{run}: {final['train/rollouts']} rollouts, not {PROMPTS * per_prompt} per step")
    return scalars(run, "val/pass@1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    opts = parser.parse_args()
    workdir, threads = Path(opts.workdir).resolve(), threads_per_run(opts.parallel)
    start = _sft(workdir, opts, threads_per_run(1))
    jobs = [(arm, seed) for seed in opts.seeds for arm in ARMS]
    with ThreadPoolExecutor(opts.parallel) as pool:
        done = dict(zip(jobs, pool.map(lambda job: _arm(*job, opts, threads), jobs), strict=True))
    print(f"methods-sft, greedy pass@1 before RL: {start:.3f}")
    print(f"{len(opts.seeds)} seeds, greedy pass@1 on 256 held-out prompts (mean ± std, then per seed)")
    print("| arm | step | rollouts | pass@1 |")
    print("|---|---|---|---|")
    curves = {}
    for arm, (_, per_prompt, _) in ARMS.items():
        steps = done[arm, opts.seeds[0]][0]
        values = [[done[arm, seed][1][i] for seed in opts.seeds] for i in range(len(steps))]
        curves[arm] = ([0, *steps], [start] + [statistics.mean(v) for v in values], per_prompt)
        for step, at in zip(steps, values, strict=True):
            spread = statistics.stdev(at) if len(at) > 1 else 0.0
            per_seed = " / ".join(f"{v:.3f}" for v in at)
            print(f"| {arm} | {step} | {step * PROMPTS * per_prompt} | {statistics.mean(at):.3f} ± {spread:.3f} "
                  f"({per_seed}) |")  # fmt: skip
    _plot(curves, workdir / "ravr.png")
    print(f"plot: {workdir / 'ravr.png'}")


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, (steps, mean, per_prompt) in curves.items():
        left.plot([s * PROMPTS * per_prompt for s in steps], mean, marker="o", label=arm)
        right.plot(steps, mean, marker="o", label=arm)
    left.set_xlabel("rollouts consumed")
    right.set_xlabel("training step (16 prompts)")
    for axis in (left, right):
        axis.set_ylabel("held-out greedy pass@1")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
