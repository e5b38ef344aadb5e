"""What a run logs beyond scalar metrics (histograms, text, figures), to every logger it has, each in its own way:
Lightning's loggers share only ``log_metrics``.

- TensorBoard: ``add_histogram``, ``add_text``, ``add_figure``;
- Weights & Biases (``logger=wandb``, offline by default): ``wandb.Histogram``, a one-column table of text, an
  image of the figure, each at the step's ``trainer/global_step`` as Lightning logs metrics;
- MLflow (``logger=mlflow``, a file store in the run directory by default; ``pass@k`` is named ``pass_at_k``, as
  MLflow refuses ``@``): a histogram as a JSON artifact of
  its bin edges and counts, text as a Markdown artifact, a figure as a PNG, under ``<kind>/<tag>/step_<step>``;
- CSV: none (its file holds scalars only).

``wandb`` and ``mlflow`` are imported only when their logger is chosen (the ``loggers`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

HISTOGRAM_BINS = 64
MEDIA_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def takes_media(trainer: L.Trainer) -> bool:
    """Whether a logger of ``trainer`` keeps histograms, text or figures (worth making them)."""
    return trainer.is_global_zero and any(isinstance(logger, MEDIA_LOGGERS) for logger in trainer.loggers)


class MLflowMetricNames(MLFlowLogger):
    """MLflow refuses ``@`` in a metric's name, which Lightning would drop (``val/pass@1`` -> ``val/pass1``): it is
    written ``_at_`` (``val/pass_at_1``)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({name.replace("@", "_at_"): value for name, value in metrics.items()}, step)


def mlflow_logger(save_dir: str, tracking_uri: str | None = None, **settings: Any) -> MLFlowLogger:
    """Lightning's MLflow logger with its file store in ``<save_dir>/mlruns`` unless ``tracking_uri`` says where
    (a database, ``sqlite:///...``, needs the full ``mlflow`` package; a server, ``http://HOST:5000``). MLflow 3
    keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set: the default
    sets it, since the file store is what works offline with the light ``mlflow-skinny``."""
    if tracking_uri is None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking_uri = (Path(save_dir) / "mlruns").resolve().as_uri()
    return MLflowMetricNames(tracking_uri=tracking_uri, save_dir=None, **settings)


def _artifact(tag: str, kind: str, step: int, suffix: str) -> str:
    return f"{kind}/{tag}/step_{step}.{suffix}"


def _to_each(trainer: L.Trainer, tensorboard: Callable, wandb: Callable, mlflow: Callable) -> None:
    """Call the writer that fits each logger of ``trainer`` with that logger (rank zero only)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        for kind, write in ((TensorBoardLogger, tensorboard), (WandbLogger, wandb), (MLFlowLogger, mlflow)):
            if isinstance(logger, kind):
                write(logger)
                break


def log_histogram(trainer: L.Trainer, tag: str, values: torch.Tensor, step: int) -> None:
    if not len(values):
        return
    values = values.detach().float().cpu()

    def to_wandb(logger: WandbLogger) -> None:
        import wandb

        logger.experiment.log({tag: wandb.Histogram(values.numpy()), "trainer/global_step": step})

    def to_mlflow(logger: MLFlowLogger) -> None:
        counts, edges = torch.histogram(values, bins=HISTOGRAM_BINS)
        table = {"edges": edges.tolist(), "counts": counts.tolist()}
        logger.experiment.log_dict(logger.run_id, table, _artifact(tag, "histograms", step, "json"))

    _to_each(trainer, lambda logger: logger.experiment.add_histogram(tag, values, step), to_wandb, to_mlflow)


def log_text(trainer: L.Trainer, tag: str, text: str, step: int) -> None:
    _to_each(
        trainer,
        lambda logger: logger.experiment.add_text(tag, text, step),
        lambda logger: logger.log_text(key=tag, columns=["text"], data=[[text]], step=step),
        lambda logger: logger.experiment.log_text(logger.run_id, text, _artifact(tag, "text", step, "md")),
    )


def log_figure(trainer: L.Trainer, tag: str, figure: Any, step: int) -> None:
    """A matplotlib figure."""
    _to_each(
        trainer,
        lambda logger: logger.experiment.add_figure(tag, figure, global_step=step, close=False),
        lambda logger: logger.log_image(key=tag, images=[figure], step=step),
        lambda logger: logger.experiment.log_figure(logger.run_id, figure, _artifact(tag, "figures", step, "png")),
    )
