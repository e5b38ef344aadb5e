"""Checkpoint entries a module rebuilds at load instead of saving: the frozen base of a LoRA policy started from a
hub entry (rebuilt from that entry), a quantized frozen copy (rebuilt from the weights it was quantized from;
bitsandbytes cannot load a 4-bit state dict into a module).

The module saves its state without them (:func:`drop_rebuilt`) and loads non-strictly, after :func:`check_complete`
has checked that the checkpoint holds every other entry and nothing unknown: a checkpoint that lacks a trainable
tensor is still an error naming it, never a silent partial load.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from zoo.errors import ConfigError


def drop_rebuilt(checkpoint: dict[str, Any], rebuilt: set[str]) -> None:
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in rebuilt}


def check_complete(module: nn.Module, checkpoint: dict[str, Any], rebuilt: set[str]) -> None:
    """One line naming what is missing from, or unknown to, ``checkpoint``'s state dict for ``module``."""
    expected = set(module.state_dict())
    present = set(checkpoint.get("state_dict", {}))
    missing = sorted(expected - present - rebuilt)
    unexpected = sorted(present - expected)
    if missing or unexpected:
        problems = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise ConfigError(
            f"checkpoint does not fit this module ({len(missing)} missing, {len(unexpected)} unexpected): "
            + "; ".join(problems)
        )
