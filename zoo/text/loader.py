"""A training DataLoader that resumes exactly where a killed run stopped.

Lightning saves the ``state_dict()`` of a training loader that has one inside its checkpoints and restores it
on resume (its ``_Stateful`` protocol). :class:`ResumableLoader` records which epoch it is in and how many
batches of that epoch it has handed out; after ``load_state_dict`` its next iteration continues with the
following batch of the same permutation. Its sampler also splits every epoch across data-parallel ranks, so
Lightning's own sampler replacement stays off (``use_distributed_sampler: false``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.errors import ConfigError, DataError


class EpochOrder(Sampler[int]):
    """A seeded permutation per epoch (or the identity), this rank's equal share of it, from ``start`` on."""

    def __init__(self, num_items: int, seed: int, shuffle: bool, rank: int, world_size: int) -> None:
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = num_items // world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        mine = order[self.rank :: self.world_size][: self.per_rank]
        start, self.start = self.start, 0  # a resume offset applies to one iteration only
        return iter(mine[start:].tolist())


class PromptStream:
    """The training prompts in the loader's seeded per-epoch order, drawn any number at a time."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.order = EpochOrder(size, seed, True, rank, world_size)
        self.epoch, self.position = 0, 0
        self._current: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if self._current is None:
            self.order.set_epoch(self.epoch)
            self._current = list(iter(self.order))
        return self._current

    def take(self, count: int, at_least: int) -> list[int]:
        """``count`` prompts in order. An epoch's tail shorter than ``at_least`` is skipped (the loader's
        ``drop_last``); a longer one is topped up from the next epoch's order."""
        taken: list[int] = []
        while len(taken) < count:
            order = self._epoch_order()
            left = len(order) - self.position
            if left == 0 or (not taken and left < at_least):
                self.epoch, self.position, self._current = self.epoch + 1, 0, None
                if len(self._epoch_order()) < at_least:
                    raise ConfigError(f"{len(self._epoch_order())} training prompts per rank cannot fill a round")
                continue
            more = order[self.position : self.position + count - len(taken)]
            self.position += len(more)
            taken.extend(more)
        return taken

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._current = state["epoch"], state["position"], None


class ResumableLoader(DataLoader):
    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        **kwargs: Any,
    ) -> None:
        order = EpochOrder(len(dataset), seed, shuffle, rank, world_size)
        if len(order) < batch_size:
            raise DataError(
                f"the training set has {len(dataset)} samples (rows), fewer than one batch of {batch_size} per rank "
                f"on {world_size} rank(s); use more data (data.train_size) or a smaller data.batch_size"
            )
        super().__init__(dataset, batch_size=batch_size, sampler=order, drop_last=True, **kwargs)
        self.order = order
        self.batches_done = 0

    @classmethod
    def for_trainer(cls, dataset: Dataset, batch_size: int, seed: int, trainer: Any, **kwargs: Any) -> ResumableLoader:
        """This rank's share of ``dataset`` under ``trainer`` (the whole of it without one)."""
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return cls(dataset, batch_size, seed=seed, rank=rank, world_size=world_size, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        self.batches_done = self.order.start // self.batch_size
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.order.set_epoch(state["epoch"])
        done = state["batches_done"]
        # A checkpoint taken after an epoch's last batch resumes at the start of the next epoch.
        self.batches_done = done if done < len(self) else 0
        self.order.start = self.batches_done * self.batch_size
