"""The progress bar: Lightning's rich bar, with the epoch shown without the "/-2" that Lightning's bar prints when
a run is bounded by steps (``max_epochs=-1``, zoo's default) instead of epochs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        description = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            description += f"/{trainer.max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"
