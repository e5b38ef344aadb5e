"""Running the ``zoo`` command line from a benchmark script: one run per call, its output in a log file, the
threads it may use set through OMP_NUM_THREADS (two 1-thread runs side by side on two cores beat one after the
other with two threads each), offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def zoo(workdir: Path, threads: int, log: str, *args: str) -> str:
    """``zoo ARGS`` in ``workdir``, its output written to ``workdir/log`` and returned; raises if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with open(workdir / log, "w") as out:
        subprocess.run([sys.executable, "-m", "zoo", *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    return (workdir / log).read_text()


def latest_run(workdir: Path, name: str) -> Path | None:
    """The newest finished run (one that wrote metrics.json) of ``name=NAME`` under ``workdir/runs``."""
    found = sorted((workdir / "runs" / name).glob("*/metrics.json"))
    return found[-1].parent if found else None


def threads_per_run(parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // parallel)


def scalars(run: Path, tag: str) -> tuple[list[int], list[float]]:
    """A run's TensorBoard scalar ``tag`` as logged: the steps (counted from 1) and the values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars(tag)
    return [p.step + 1 for p in points], [p.value for p in points]
