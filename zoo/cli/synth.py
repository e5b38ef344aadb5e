"""``zoo synth run|metrics``: DESIGNER data synthesis and the diversity metrics of a question set."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zoo.cli.common import user_error
from zoo.errors import ConfigError, DataError, ZooError


# -- data synthesis ------------------------------------------------------------------------------------------
def synth_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="zoo synth", description="DESIGNER data synthesis (arXiv:2508.12726)")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run (or continue) the pipeline; its output: WORKDIR/sft.jsonl, report.md")
    run.add_argument("config", help="a config name under configs/synth (default, math) or a YAML file")
    run.add_argument("overrides", nargs="*", help="key=value settings, e.g. workdir=synth/run1 llm.model=hub:NAME")
    run.add_argument("--restart", action="store_true", help="delete what the pipeline wrote in the workdir, start over")
    metrics = sub.add_parser("metrics", help="mean cosine / L2 / 1-NN distance, K-means inertia, radius")
    metrics.add_argument("data", nargs="+", help="JSONL files (question|problem|text) or synth work directories")
    metrics.add_argument("--field", help="the text field (default: question, problem or text)")
    metrics.add_argument("--embedder", default="minilm", help="minilm | hashing | hub:NAME (a zoo model)")
    metrics.add_argument("--limit", type=int, help="a seeded sample of this many texts per set")
    metrics.add_argument("--k", type=int, default=16, help="K-means clusters for the inertia")
    metrics.add_argument("--float32", action="store_true", help="the O(N²) metrics in float32 (faster at scale)")
    metrics.add_argument("--json", help="also write the figures to this JSON file")
    opts = parser.parse_args(args)
    try:
        if opts.action == "run":
            _synth_run(opts)
        else:
            _synth_metrics(opts)
    except ZooError as e:
        user_error(e)
    except KeyboardInterrupt:  # the requests in flight are abandoned on daemon threads: the process ends now
        kept = "; the work directory keeps every finished item: run the same command to continue"
        print(f"zoo synth: interrupted{kept if opts.action == 'run' else ''}", file=sys.stderr)
        sys.exit(130)


def _synth_run(opts) -> None:
    from zoo.synth.pipeline import Pipeline, check_workdir, load_config, restart

    config = load_config(opts.config, opts.overrides)
    workdir = Path(config["workdir"]).expanduser()
    if opts.restart:
        restart(config, workdir)
    check_workdir(config, workdir)
    out = Pipeline(config, workdir).run()
    print((workdir / "report.md").read_text())
    print(f"wrote {out} ({sum(1 for _ in out.open())} examples) and {workdir / 'report.md'}")


def _synth_metrics(opts) -> None:
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from zoo.synth.embedders import build_embedder
    from zoo.synth.metrics import METRICS, diversity
    from zoo.synth.sources import read_texts

    if opts.k < 1 or (opts.limit is not None and opts.limit < 2):
        raise ConfigError("--k must be >= 1 and --limit >= 2")
    if opts.json and not os.access(Path(opts.json).expanduser().resolve().parent, os.W_OK):
        raise ConfigError(f"--json {opts.json}: its folder does not exist or cannot be written")
    if opts.embedder == "minilm":
        embedder = build_embedder({"kind": "sentence-transformers", "path": "minilm"})
    elif opts.embedder == "hashing":
        embedder = build_embedder({"kind": "hashing"})
    else:
        embedder = build_embedder({"kind": "zoo", "model": opts.embedder})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = Table("data", "N", *METRICS, "seconds", box=None, pad_edge=False)
    results = {}
    for source in opts.data:
        texts = read_texts(source, opts.field, opts.limit)
        if len(texts) < 2:
            raise DataError(f"{source}: {len(texts)} text; the pairwise metrics need at least 2")
        start = time.perf_counter()
        vectors = embedder.embed(texts, "question").to(device)
        figures = diversity(vectors, opts.k, dtype=torch.float32 if opts.float32 else torch.float64)
        results[source] = {"n": len(texts), **figures}
        table.add_row(
            source, str(len(texts)), *(f"{figures[m]:.4f}" for m in METRICS), f"{time.perf_counter() - start:.1f}"
        )
    Console(width=200).print(table)
    if opts.json:
        try:
            Path(opts.json).expanduser().write_text(json.dumps(results, indent=2))
        except OSError as e:
            raise ConfigError(f"--json {opts.json}: cannot be written ({e.strerror or e})") from None
