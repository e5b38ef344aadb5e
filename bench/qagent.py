"""QAgent's experiment (arXiv:2510.08383 Table 3's direction; notes §5.8) on zoo's embedded search world, every
step through the command line.

    python bench/qagent.py [--seeds 1337 1 2] [--parallel 1] [--workdir DIR] [--reuse] [--reader SPEC]

The SFT warm start (``zoo fit experiment=qagent_sft``, pushed to the hub, ZOO_HUB, as ``qagent-sft``) is asked
greedily on the held-out questions (``zoo validate``); then per seed, from it, GRPO stage 1
(``experiment=qagent_stage1``, pushed as ``qagent-stage1-SEED``) and from that stage 2 (``experiment=qagent_stage2``).
Every policy is validated on the same 128 held-out questions with the same frozen reader (``--reader``: extractive
by default, or a model source): the table prints, as mean ± std over seeds, the end-to-end strict EM, the agent as
a submodule (Hit of its passages at 1 passage a query, the reader's non-strict EM and F1), searches per question,
and the baselines: no retrieval and naive RAG (the question as the query, top 5 and top 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo_runs import latest_run, threads_per_run, zoo

COLUMNS = {  # metric: heading
    "val/em": "end-to-end EM",
    "val/hit": "Hit (agent's passages)",
    "val/reader_em": "reader EM",
    "val/reader_f1": "reader F1",
    "val/searches": "searches",
}


def _validate(workdir: Path, threads: int, name: str, source: str, opts, *extra: str) -> dict:
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "validate", "experiment=qagent_stage1", f"model.init_from={source}",
            f"name={name}", f"module.reader={opts.reader}", *extra, "trainer.enable_progress_bar=false")  # fmt: skip
        run = latest_run(workdir, name)
    return json.loads((run / "metrics.json").read_text())


def _fit(workdir: Path, threads: int, name: str, opts, *args: str) -> Path:
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "fit", *args, f"name={name}", "trainer.enable_progress_bar=false")
        run = latest_run(workdir, name)
    return run


def _seed(seed: int, opts, threads: int) -> dict[str, dict]:
    workdir = Path(opts.workdir).resolve()
    reader = f"module.reader={opts.reader}"
    stage1 = _fit(workdir, threads, f"qagent_stage1_{seed}", opts, "experiment=qagent_stage1", f"seed={seed}", reader)
    zoo(workdir, threads, f"push_stage1_{seed}.log", "hub", "push", str(stage1), "--name", f"qagent-stage1-{seed}",
        "--force")  # fmt: skip
    stage2 = _fit(workdir, threads, f"qagent_stage2_{seed}", opts, "experiment=qagent_stage2", f"seed={seed}", reader,
                  f"model.init_from=hub:qagent-stage1-{seed}")  # fmt: skip
    return {
        "stage 1": json.loads((stage1 / "metrics.json").read_text()),
        "stage 1 + 2": json.loads((stage2 / "metrics.json").read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--parallel", type=int, default=1, help="seeds at a time")
    parser.add_argument("--reader", default="extractive")
    opts = parser.parse_args()
    workdir = Path(opts.workdir).resolve()
    sft = _fit(workdir, threads_per_run(1), "qagent_sft", opts, "experiment=qagent_sft")
    zoo(workdir, 1, "push_sft.log", "hub", "push", str(sft), "--name", "qagent-sft", "--force")
    before = _validate(workdir, threads_per_run(1), "qagent_sft_validate", "hub:qagent-sft", opts)
    with ThreadPoolExecutor(opts.parallel) as pool:
        runs = list(pool.map(lambda s: _seed(s, opts, threads_per_run(opts.parallel)), opts.seeds))
    print(f"{len(opts.seeds)} seeds ({', '.join(map(str, opts.seeds))}), 128 held-out questions, reader {opts.reader}")
    print("| policy | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    print(
        f"| no retrieval | - | - | {before['val/vanilla_reader_em']:.3f} | {before['val/vanilla_reader_f1']:.3f} | 0 |"
    )
    print(f"| naive RAG (question, top 5) | - | {before['val/naive_rag_hit']:.3f} | "
          f"{before['val/naive_rag_reader_em']:.3f} | {before['val/naive_rag_reader_f1']:.3f} | 1 |")  # fmt: skip
    print("| SFT warm start | " + " | ".join(f"{before.get(m, float('nan')):.3f}" for m in COLUMNS) + " |")
    for arm in ("stage 1", "stage 1 + 2"):
        cells = []
        for metric in COLUMNS:
            values = [r[arm].get(metric, float("nan")) for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    for arm in ("stage 1", "stage 1 + 2"):
        per_seed = "; ".join(
            f"{seed}: EM {r[arm]['val/em']:.3f}, Hit {r[arm]['val/hit']:.3f}, reader EM {r[arm]['val/reader_em']:.3f}"
            for seed, r in zip(opts.seeds, runs, strict=True)
        )
        print(f"{arm} per seed: {per_seed}")


if __name__ == "__main__":
    main()
