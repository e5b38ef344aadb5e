"""QAgent's experiment (arXiv:2510.08383 Table 3's direction; notes §5.8) on zoo's embedded search world, every
step through the command line.

    python bench/qagent.py [--seeds 1337 1 2] [--parallel 1] [--workdir DIR] [--reuse]
    python bench/qagent.py --memory 0.5 --teacher-error 0.3 --seeds 1337 1 --readers extractive   # hacking check

First the SFT warm start (``zoo fit experiment=qagent_sft``, pushed to the hub, ZOO_HUB, as ``qagent-sft``) and a
second frozen reader, a tiny language model (``experiment=qagent_reader_sft``, pushed as ``qagent-reader``). Then
per seed, from the warm start, GRPO stage 1 (``experiment=qagent_stage1``) and from it stage 2
(``experiment=qagent_stage2``, rewarded through the extractive reader), each pushed as ``qagent-stage1-SEED`` and
``qagent-stage2-SEED``. Every policy is validated (``zoo validate``) on the same 128 held-out questions with each
reader: the extractive one (stage 2's) and the language model (never seen in training: the plug-and-play check).
Printed per reader, mean ± std over seeds: the end-to-end strict EM, the agent as a submodule (Hit of its passages
at one passage a query; the reader's non-strict EM and F1 from them), the right answers whose passages lack the
gold (memory or guesses: "utilisation hacking"), searches per question, and the baselines on the same questions:
no retrieval, and naive RAG (the question as the one query, top 5).

``--memory SHARE``: the "utilisation hacking" check of notes §5.8. The warm start also learns from a teacher that
answers the last hop from memory (``data.options.memory``; ``--teacher-error`` the sloppy share), a route stage 1
pays for whenever the memory is right and stage 2 does not (the reader sees no gold passage; Hit counts half). Its
runs are named ``*_memory``; watch ``right without the gold passage``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo_runs import latest_run, threads_per_run, zoo

READERS = {"extractive": "extractive", "tiny LM (qagent-reader)": "hub:qagent-reader"}
COLUMNS = {  # metric: heading
    "val/em": "end-to-end EM",
    "val/hit": "Hit@1",
    "val/reader_em": "reader EM",
    "val/reader_f1": "reader F1",
    "val/em_without_hit": "right without the gold passage",
    "val/searches": "searches",
}


def _fit(workdir: Path, threads: int, name: str, opts, *args: str) -> Path:
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "fit", *args, f"name={name}", "trainer.enable_progress_bar=false")
        run = latest_run(workdir, name)
    zoo(workdir, threads, f"push_{name}.log", "hub", "push", str(run), "--name", name.replace("_", "-"), "--force")
    return run


def _validate(workdir: Path, threads: int, policy: str, reader: str, opts) -> dict:
    name = f"validate_{policy.removeprefix('hub:')}_{reader.removeprefix('hub:')}".replace("-", "_")
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        zoo(workdir, threads, f"{name}.log", "validate", "experiment=qagent_stage1", f"model.init_from={policy}",
            f"name={name}", f"module.reader={reader}", "trainer.enable_progress_bar=false")  # fmt: skip
        run = latest_run(workdir, name)
    return json.loads((run / "metrics.json").read_text())


def _seed(seed: int, opts, threads: int) -> dict[str, dict[str, dict]]:
    workdir, tag = Path(opts.workdir).resolve(), opts.tag
    _fit(workdir, threads, f"qagent_stage1{tag}_{seed}", opts, "experiment=qagent_stage1", f"seed={seed}",
         f"model.init_from=hub:qagent-sft{tag.replace('_', '-')}")  # fmt: skip
    _fit(workdir, threads, f"qagent_stage2{tag}_{seed}", opts, "experiment=qagent_stage2", f"seed={seed}",
         f"model.init_from=hub:qagent-stage1{tag.replace('_', '-')}-{seed}")  # fmt: skip
    return {
        arm: {reader: _validate(workdir, threads, f"hub:qagent-{entry}{tag.replace('_', '-')}-{seed}", READERS[reader],
                                opts) for reader in opts.readers}
        for arm, entry in (("stage 1", "stage1"), ("stage 1 + 2", "stage2"))
    }  # fmt: skip


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--parallel", type=int, default=1, help="seeds at a time")
    parser.add_argument("--readers", nargs="+", choices=list(READERS), default=list(READERS))
    parser.add_argument("--memory", type=float, help="the warm start's share of the memory teacher")
    parser.add_argument("--teacher-error", type=float, default=0.8, help="with --memory: the sloppy share")
    opts = parser.parse_args()
    workdir, threads = Path(opts.workdir).resolve(), threads_per_run(1)
    opts.tag = "_memory" if opts.memory is not None else ""
    options = (
        [f"data.options.teacher_error={opts.teacher_error}", f"+data.options.memory={opts.memory}"] if opts.tag else []
    )
    _fit(workdir, threads, f"qagent_sft{opts.tag}", opts, "experiment=qagent_sft", *options)
    if "tiny LM (qagent-reader)" in opts.readers:
        _fit(workdir, threads, "qagent_reader", opts, "experiment=qagent_reader_sft")
    before = {r: _validate(workdir, threads, f"hub:qagent-sft{opts.tag.replace('_', '-')}", READERS[r], opts)
              for r in opts.readers}  # fmt: skip
    with ThreadPoolExecutor(opts.parallel) as pool:
        runs = list(pool.map(lambda s: _seed(s, opts, threads_per_run(opts.parallel)), opts.seeds))
    print(f"{len(opts.seeds)} seeds ({', '.join(map(str, opts.seeds))}), 128 held-out questions")
    for reader in opts.readers:
        b = before[reader]
        print(f"\nreader: {reader}")
        print("| policy | " + " | ".join(COLUMNS.values()) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        print(f"| no retrieval | - | - | {b['val/vanilla_reader_em']:.3f} | {b['val/vanilla_reader_f1']:.3f} | - | 0 |")
        print(f"| naive RAG (the question, top 5) | - | {b['val/naive_rag_hit']:.3f} (Hit@5) | "
              f"{b['val/naive_rag_reader_em']:.3f} | {b['val/naive_rag_reader_f1']:.3f} | - | 1 |")  # fmt: skip
        print("| SFT warm start | " + " | ".join(f"{b[m]:.3f}" for m in COLUMNS) + " |")
        for arm in ("stage 1", "stage 1 + 2"):
            print(f"| {arm} | " + " | ".join(_cell([r[arm][reader][m] for r in runs]) for m in COLUMNS) + " |")
        for arm in ("stage 1", "stage 1 + 2"):
            per_seed = "; ".join(
                f"{seed}: EM {r[arm][reader]['val/em']:.3f}, Hit {r[arm][reader]['val/hit']:.3f}, "
                f"reader EM {r[arm][reader]['val/reader_em']:.3f}"
                for seed, r in zip(opts.seeds, runs, strict=True)
            )
            print(f"{arm} per seed: {per_seed}")


if __name__ == "__main__":
    main()
