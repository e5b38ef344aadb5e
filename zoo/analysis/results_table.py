"""A Hydra callback that turns a multirun into a results table: Markdown, CSV and a plot in the sweep directory.

Each job of the sweep leaves ``metrics.json`` (written by ``zoo.run``) and TensorBoard events; at the end of the
sweep this callback collects one row per job, labelled by the swept choices (``hydra.runtime.choices`` of the
keys in ``label_keys``), with the metrics in ``columns`` (metric key → column title). The plot shows the
validation loss curve of every job and the final value of ``bar_metric`` per job.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("zoo")


def _job_label(job_dir: Path, label_keys: list[str]) -> str:
    hydra_config = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    choices = hydra_config["runtime"]["choices"]
    overrides = dict(o.split("=", 1) for o in hydra_config["overrides"]["task"] if "=" in o)
    return ", ".join(str(choices.get(k, overrides.get(k, "?"))) for k in label_keys)


def _val_curve(job_dir: Path) -> tuple[list[int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its directory watcher is chatty at INFO
    events = EventAccumulator(str(job_dir / "tb"))
    events.Reload()
    if "val/loss" not in events.Tags().get("scalars", []):
        return [], []
    points = events.Scalars("val/loss")
    return [p.step + 1 for p in points], [p.value for p in points]


class ResultsTable(Callback):
    def __init__(
        self,
        columns: dict[str, str],
        label_keys: list[str],
        title: str = "results",
        bar_metric: str = "val/ppl",
    ) -> None:
        self.columns, self.label_keys, self.title, self.bar_metric = dict(columns), list(label_keys), title, bar_metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep_dir.glob("*/metrics.json")), key=lambda p: p.stat().st_mtime)
        if not jobs:
            log.warning("results table: no finished job under %s", sweep_dir)
            return
        rows = []
        for job in jobs:
            metrics = json.loads((job / "metrics.json").read_text())
            rows.append(
                {"variant": _job_label(job, self.label_keys), **{t: metrics.get(k) for k, t in self.columns.items()}}
            )
        self._write(sweep_dir, rows, jobs)
        log.info("results table: %s", sweep_dir / "results.md")

    def _write(self, sweep_dir: Path, rows: list[dict[str, Any]], jobs: list[Path]) -> None:
        header = list(rows[0])
        with open(sweep_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

        def cell(value: Any) -> str:
            if isinstance(value, float):
                return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
            return f"{value:,}" if isinstance(value, int) else str(value)

        lines = [f"# {self.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(row[h]) for h in header) + " |" for row in rows]
        (sweep_dir / "results.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
        bar_title = self.columns.get(self.bar_metric, self.bar_metric)
        for row, job in zip(rows, jobs, strict=True):
            steps, values = _val_curve(job)
            curves.plot(steps, values, marker="o", markersize=3, label=row["variant"])
        curves.set_xlabel("step")
        curves.set_ylabel("validation loss")
        curves.legend(fontsize=8)
        heights = [row.get(bar_title) or 0 for row in rows]
        bars.bar([row["variant"] for row in rows], heights)
        bars.set_ylim(0.95 * min(heights), 1.02 * max(heights))  # the differences, not the distance from zero
        bars.set_ylabel(bar_title)
        bars.tick_params(axis="x", rotation=20)
        figure.suptitle(self.title)
        figure.tight_layout()
        figure.savefig(sweep_dir / "results.png", dpi=120)
        plt.close(figure)
