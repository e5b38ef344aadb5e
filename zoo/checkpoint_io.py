"""Lightning checkpoints written atomically, and read without unpickling arbitrary objects.

A checkpoint goes to a temporary file beside its target, is fsynced, then renamed over the target in one
step: a run killed during a save leaves the previous checkpoint whole. Loading uses
``torch.load(weights_only=True)`` (tensors and plain containers only), which zoo's checkpoints satisfy.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.errors import ConfigError
from zoo.files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_file(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"checkpoint not found: {path}") from None
        except Exception as e:  # truncated, corrupted, or not a checkpoint: name the file
            raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
