"""What every module that trains a policy shares: where the policy starts, its LoRA adapters, and what its
checkpoints hold.

- ``model``: the network's config (a plain dict naming its ``arch``), plus ``init_from`` (a hub entry, a run's
  checkpoint or a Hugging Face directory: :func:`zoo.hub.store.build_initialized`) and ``lora``
  (:mod:`zoo.training.lora`). The network is built in ``configure_model`` (:meth:`PolicyModule.build_policy`),
  where the FSDP2 strategy shards it block by block; a checkpoint alone rebuilds the module.
- Checkpoints leave out what is rebuilt at load (:mod:`zoo.io.rebuilt_state`): a LoRA policy's frozen base when it
  comes from ``init_from``, pinned by the source's fingerprint, so a resume or a validation checks that the base is
  the one trained on. A subclass adds its own rebuilt entries (:meth:`rebuilt_entries`) and the counters its
  checkpoints carry (``counters``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch

from zoo.hub.store import build_initialized, pinned_source
from zoo.io.rebuilt_state import check_complete, drop_rebuilt
from zoo.models import config_from_dict
from zoo.training.lora import apply_lora, check_lora_start, frozen_base_rebuilt, frozen_entries, lora_settings
from zoo.training.strategies import shard_for_strategy


class PolicyModule(L.LightningModule):
    counters: ClassVar[tuple[str, ...]] = ()  # attributes saved in every checkpoint (integers; 0 when absent)

    def __init__(self, model: dict[str, Any]) -> None:
        super().__init__()
        model = dict(model)
        self.init_from = model.pop("init_from", None)
        self.lora = lora_settings(model.pop("lora", None))
        self.model_config = config_from_dict(model)
        check_lora_start(self.lora, self.init_from)
        self.model: torch.nn.Module | None = None  # the policy, built in configure_model
        self.start: tuple[str, str] | None = None  # init_from and its fingerprint, when checkpoints rebuild from it

    @property
    def strict_loading(self) -> bool:  # what a checkpoint leaves out (rebuilt) is checked in on_load_checkpoint
        return not self.rebuilds_state

    def build_policy(self) -> None:
        """The policy from ``init_from`` (or freshly initialized), its copies made (:meth:`copy_policy`), then its
        adapters added and the whole sharded for the strategy."""
        self.start = pinned_source(self.init_from, self.rebuilds_state)
        self.model = build_initialized(self.model_config, self.init_from)
        self.copy_policy(self.model)
        if self.lora is not None:
            apply_lora(self.model, self.lora)
        shard_for_strategy(self, self.model)

    def copy_policy(self, policy: torch.nn.Module) -> None:
        """Models started from the policy's weights, before its adapters and sharding (the RL reference, a
        critic); none by default."""

    # -- checkpoints ------------------------------------------------------------------------------------
    @property
    def rebuilds_state(self) -> bool:
        """Whether checkpoints leave entries out, to be rebuilt at load."""
        return frozen_base_rebuilt(self.lora, self.init_from)

    def rebuilt_entries(self) -> set[str]:
        """The state-dict keys rebuilt at load rather than saved: a LoRA policy's frozen base when it comes from
        ``model.init_from``."""
        return frozen_entries(self.model, "model.") if frozen_base_rebuilt(self.lora, self.init_from) else set()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update({name: getattr(self, name) for name in self.counters})
        drop_rebuilt(checkpoint, self.rebuilt_entries(), self.start)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name in self.counters:
            setattr(self, name, checkpoint.get(name, 0))
        source = self.start or pinned_source(self.init_from, self.rebuilds_state)
        check_complete(self, checkpoint, self.rebuilt_entries(), source)
