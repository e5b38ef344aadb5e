"""Lightning checkpoints written atomically, and read without unpickling arbitrary objects.

A checkpoint goes to a temporary file beside its target, is fsynced, then renamed over the target in one
step: a run killed during a save leaves the previous checkpoint whole. Every read in zoo goes through
:func:`read_checkpoint`, which passes ``weights_only=True`` explicitly (tensors and plain containers only, which
zoo's checkpoints satisfy): an explicit argument is what torch honours even under
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or a torch whose default is still ``weights_only=False``, so a pickle
payload in a ``.ckpt`` never runs.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.errors import ConfigError, TrainingDiverged
from zoo.io.files import atomic_file


def read_checkpoint(path: _PATH, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, unpickling tensors and plain containers only; one line naming the file otherwise.
    ``mmap`` maps the tensors instead of reading them (a cheap check that a file is a checkpoint)."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {path}") from None
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{path}: not a readable checkpoint (it holds objects other than tensors and plain containers; "
            "zoo loads weights only, so they were not run)"
        ) from None
    except Exception as e:  # truncated, corrupted, or not a checkpoint: name the file
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__
        raise ConfigError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingDiverged(
                    f"refusing to write {path}: weight {name} is not finite (the file keeps its last finite weights)"
                )
        with atomic_file(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(path, map_location or "cpu")  # weights only, whatever the caller asks
