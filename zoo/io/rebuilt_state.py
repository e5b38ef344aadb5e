"""Checkpoint entries a module rebuilds at load instead of saving: the frozen base of a LoRA policy started from a
hub entry (rebuilt from that entry), a quantized frozen copy (rebuilt from the weights it was quantized from;
bitsandbytes cannot load a 4-bit state dict into a module).

The module saves its state without them (:func:`drop_rebuilt`) and loads non-strictly, after :func:`check_complete`
has checked that the checkpoint holds every other entry and nothing unknown: a checkpoint that lacks a trainable
tensor is still an error naming it, never a silent partial load.

What they are rebuilt from (``model.init_from``) is pinned when training starts by its fingerprint (a hub entry's
manifest sha256, a Hugging Face directory's files; :func:`zoo.hub.store.source_fingerprint`), recorded in every
checkpoint and compared at every use (:func:`check_rebuilt_from`): a base pushed over with ``--force`` by another
model of the same shape is refused in one line, not silently trained, validated or merged on.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from zoo.errors import ConfigError

REBUILT_FROM = "rebuilt_from"  # the checkpoint's record of its source: {"source": spec, "fingerprint": sha256}
Source = tuple[str, str]  # (model.init_from, its fingerprint)


def drop_rebuilt(checkpoint: dict[str, Any], rebuilt: set[str], source: Source | None = None) -> None:
    """Leave ``rebuilt`` out of ``checkpoint``, and record the ``source`` they are rebuilt from."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in rebuilt}
    if rebuilt and source is not None:
        checkpoint[REBUILT_FROM] = {"source": source[0], "fingerprint": source[1]}


def check_rebuilt_from(checkpoint: dict[str, Any], source: Source | None) -> None:
    """One line unless ``source`` is the model ``checkpoint`` recorded as the source of its left-out state."""
    recorded = checkpoint.get(REBUILT_FROM)
    if recorded is None or source is None or recorded.get("fingerprint") == source[1]:
        return
    raise ConfigError(
        f"{source[0]} is not the model this checkpoint was trained from (fingerprint "
        f"{str(recorded.get('fingerprint'))[:12]}… then, {source[1][:12]}… now, e.g. pushed over with --force): the "
        "state the checkpoint leaves out (a LoRA policy's frozen base, a quantized copy) would be rebuilt from other "
        "weights; bring that model back, or train again"
    )


def check_complete(
    module: nn.Module, checkpoint: dict[str, Any], rebuilt: set[str], source: Source | None = None
) -> None:
    """One line naming what is missing from, or unknown to, ``checkpoint``'s state dict for ``module``, or a
    ``source`` that is not the one the checkpoint's left-out state came from."""
    check_rebuilt_from(checkpoint, source)
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
