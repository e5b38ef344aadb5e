"""A callback that runs the loop probes (``zoo.analysis.probes``) on a fixed validation batch every N training steps and
logs them to TensorBoard: scalars (``probe/...``) and figures (relative updates, CKA matrix, spectra).

The batch is the first ``samples`` blocks of the validation split, fixed for the whole run so that the
probes of different steps are comparable. Sharded models (FSDP1/FSDP2) and Hugging Face models (whose blocks
zoo cannot trace) are not probed.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from zoo.analysis.probes import figures, loop_probes
from zoo.models.interface import Traceable
from zoo.training.loggers import log_figure, takes_media

log = logging.getLogger("zoo")


class LoopProbes(L.Callback):
    def __init__(self, every_n_steps: int = 100, samples: int = 8, figures_every_n_probes: int = 1) -> None:
        self.every_n_steps, self.samples, self.figures_every = every_n_steps, samples, figures_every_n_probes
        self.batch: torch.Tensor | None = None
        self.probes_done = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
            log.info("loop probes: off for a sharded model")
            self.every_n_steps = 0
            return
        if not isinstance(pl_module.model, Traceable):
            log.info("loop probes: off, they trace the blocks of zoo's own models only")
            self.every_n_steps = 0
            return
        val = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        first = next(iter(val), None) if val is not None else None
        if not isinstance(first, torch.Tensor):
            log.info("loop probes: off, the validation data are not blocks of tokens")
            self.every_n_steps = 0
            return
        blocks = [block for batch in val for block in batch][: self.samples]
        self.batch = torch.stack(blocks)[:, :-1]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or not trainer.is_global_zero:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        report = loop_probes(model, self.batch.to(pl_module.device))
        model.train(was_training)
        for logger in trainer.loggers:
            logger.log_metrics(report.scalars(), step=step)
        if self.probes_done % self.figures_every == 0 and takes_media(trainer):
            import matplotlib.pyplot as plt

            for tag, figure in figures(report).items():
                log_figure(trainer, tag, figure, step)
                plt.close(figure)
        self.probes_done += 1
