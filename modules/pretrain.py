"""Causal-LM pretraining of any model in ``zoo.models``.

The module takes the model's *config* (a plain dict naming its ``arch``), never a built network, so a
checkpoint alone rebuilds it (``PretrainModule.load_from_checkpoint``); where the network starts, its adapters and
its checkpoints are every policy module's (:mod:`zoo.modules.policy`).

Logged: ``train/loss``, ``train/grad_norm`` (before clipping), ``train/lr``, ``train/tokens_per_s`` (all ranks),
``train/tokens`` (seen so far), ``val/loss`` and ``val/ppl`` (token-weighted over the whole val split).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torchmetrics.aggregation import MeanMetric

from zoo.modules.policy import PolicyModule
from zoo.training.optim import OptimConfig, build_adamw, build_schedule, ensure_finite
from zoo.training.strategies import clip_grad_norm

Batch = torch.Tensor | dict[str, torch.Tensor]


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy through the model's fused loss head, of a block of tokens (B, T + 1) or of
    packed examples (``input_ids``, ``targets`` with -100 where nothing is learned, ``position_ids``,
    ``segment_ids``; see ``zoo.datamodules.sft``)."""
    if isinstance(batch, dict):
        return model(
            batch["input_ids"],
            targets=batch["targets"],
            position_ids=batch.get("position_ids"),  # absent from unpacked rows (data.pack=false)
            segment_ids=batch.get("segment_ids"),
        )
    return model(batch[:, :-1], targets=batch[:, 1:])


def _tokens(batch: Batch) -> int:
    """Input positions of a batch (padding of packed rows included)."""
    return batch["input_ids"].numel() if isinstance(batch, dict) else batch[:, 1:].numel()


def _targets(batch: Batch) -> int:
    """Positions that carry a loss."""
    return int((batch["targets"] != -100).sum()) if isinstance(batch, dict) else batch[:, 1:].numel()


class PretrainModule(PolicyModule):
    counters = ("tokens_seen",)

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(model)
        self.save_hyperparameters()
        self.optim_config = OptimConfig.from_dict(optim)
        self.val_loss = MeanMetric()
        self.tokens_seen = 0
        self.step_rates: list[float] = []  # tokens/s of every step timed so far
        self._last_batch_end: float | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.build_policy()
        self.loss_fn = torch.compile(causal_lm_loss) if self.hparams.compile else causal_lm_loss

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids, **kwargs)

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self.model, batch)
        self.log("train/loss", loss, prog_bar=True)
        self._step_loss = loss.detach()
        # counted here, not at the batch's end: a checkpoint saved at this step (by a callback, before the
        # module's own batch-end hook) must include this batch's tokens
        self.tokens_seen += _tokens(batch) * self.trainer.world_size
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        tokens = _tokens(batch) * self.trainer.world_size
        # Throughput from one batch end to the next covers a whole step (data, forward, backward, optimizer);
        # on a GPU the queue of launched kernels is bounded, so in steady state this is the true rate.
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self.step_rates.append(tokens / (now - self._last_batch_end))
            self.log("train/tokens_per_s", self.step_rates[-1])
        self._last_batch_end = now
        self.log("train/tokens", float(self.tokens_seen))
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        max_norm = self.optim_config.grad_clip or math.inf
        norm = clip_grad_norm(self.trainer.strategy, self.model, max_norm)
        ensure_finite(self.global_step, loss=self._step_loss, grad_norm=norm)  # before the optimizer step
        self.log("train/grad_norm", norm)

    def configure_optimizers(self):
        optimizer = build_adamw(self.model, self.optim_config)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        schedule = build_schedule(optimizer, self.optim_config, int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def median_tokens_per_s(self) -> float:
        """The typical training step's throughput (all ranks): the median is blind to the steps that also
        compiled, probed, evaluated or saved a checkpoint."""
        return statistics.median(self.step_rates) if self.step_rates else 0.0

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, batch: Batch) -> None:
        self.val_loss.update(causal_lm_loss(self.model, batch), weight=_targets(batch))

    def _log_evaluation(self, stage: str) -> None:
        loss = self.val_loss.compute()
        self.log(f"{stage}/loss", loss, sync_dist=False)
        self.log(f"{stage}/ppl", torch.exp(loss), sync_dist=False)
        self.val_loss.reset()

    def on_validation_start(self) -> None:
        self._last_batch_end = None  # the step after an evaluation would count the evaluation's time

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
