"""Padding-free rollout rows: the sequences of a rollout batch packed into rows of a model's forward.

A rollout batch is laid out padded (:class:`zoo.rl.rollout.RolloutBatch`: every sequence right-padded to the
longest), which is what the losses read. A forward over that layout spends compute and activation memory on the
padding; with ``module.algorithm.padding_free`` the forwards that meet a model (log-probs, critic values) run on
:class:`PackedRows` instead: each sequence's real tokens (``RolloutBatch.lengths``: up to its last completion
token), packed whole, first-fit longest first, into rows no wider than the longest sequence; ``segment_ids`` keep
packed sequences from attending to each other and ``position_ids`` restart at 0 for each, so a sequence sees what it
sees alone (:class:`zoo.models.interface.CausalLM`). Only the positions that predict a token of their own
sequence come back (:meth:`PackedRows.gather`), and :meth:`PackedRows.scatter` lays them out as the batch's (N, L),
zero past each sequence's length.

Rows are as wide as the longest sequence (not one row per micro-batch), so a packed forward's attention (quadratic
in a row's width, whatever its mask) and its mask are never larger than the padded forward's; the forward's tokens
drop from N x longest to the packed rows x longest (the sum of the lengths and the rows' unfilled ends). A
micro-batch's token budget counts those (:meth:`zoo.rl.rollout.RolloutBatch.micro_batches` fills rows as
:meth:`PackedRows.of` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class FirstFit:
    """Rows of ``width`` tokens filled first-fit: a sequence goes into the first row with room for it, else a new
    row (sequences given longest first: first-fit decreasing). :meth:`PackedRows.of` packs with it and
    :meth:`zoo.rl.rollout.RolloutBatch.micro_batches` counts a packed micro-batch's rows with it."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[int]] = []  # the sequences of each row
        self.room: list[int] = []

    def row_for(self, size: int) -> int | None:
        """The row a sequence of ``size`` tokens would go into; None: a new one."""
        return next((r for r, free in enumerate(self.room) if free >= size), None)

    def add(self, sequence: int, size: int) -> None:
        row = self.row_for(size)
        if row is None:
            self.rows.append([])
            self.room.append(self.width)
            row = len(self.rows) - 1
        self.rows[row].append(sequence)
        self.room[row] -= size


@dataclass(frozen=True)
class PackedRows:
    input_ids: torch.Tensor  # (R, W) sequences packed whole, 0 after the last one of a row
    position_ids: torch.Tensor  # (R, W) restarting at 0 for each sequence
    segment_ids: torch.Tensor  # (R, W) which sequence of its row (the padding after them: one more)
    rows: torch.Tensor  # (S,) for each predicting position: its sequence (the batch's row)
    columns: torch.Tensor  # (S,) its target position in the batch's layout
    flat: torch.Tensor  # (S,) its position in the packed rows, flattened (row x W + column)

    @classmethod
    def of(cls, input_ids: torch.Tensor, lengths: torch.Tensor) -> PackedRows:
        """The rows of ``input_ids`` (N, L + 1), each's first ``lengths[i]`` tokens (>= 2), packed."""
        sizes = lengths.tolist()
        width = max(sizes)
        fill = FirstFit(width)
        for sequence in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
            fill.add(sequence, sizes[sequence])
        bins = fill.rows
        device = input_ids.device
        packed = torch.zeros(len(bins), width, dtype=input_ids.dtype, device=device)
        positions = torch.zeros(len(bins), width, dtype=torch.long, device=device)
        segments = torch.zeros(len(bins), width, dtype=torch.long, device=device)
        rows, columns, flat = [], [], []
        for r, members in enumerate(bins):
            start = 0
            for segment, sequence in enumerate(members):
                size = sizes[sequence]
                packed[r, start : start + size] = input_ids[sequence, :size]
                positions[r, start : start + size] = torch.arange(size, device=device)
                segments[r, start : start + size] = segment
                rows.append(torch.full((size - 1,), sequence))
                columns.append(torch.arange(size - 1))
                flat.append(torch.arange(r * width + start, r * width + start + size - 1))
                start += size
            segments[r, start:] = len(members)
        index = (torch.cat(rows), torch.cat(columns), torch.cat(flat))
        return cls(packed, positions, segments, *(i.to(device) for i in index))

    def __len__(self) -> int:
        """Predicting positions (the batch's target tokens within the sequences' lengths)."""
        return self.flat.shape[0]

    def gather(self, per_position: torch.Tensor) -> torch.Tensor:
        """The predicting positions' entries (S, ...) of a forward's output over the packed rows (R, W, ...)."""
        return per_position.flatten(0, 1).index_select(0, self.flat)

    def targets(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token (S,) each predicting position predicts, from the batch's ``input_ids`` (N, L + 1)."""
        return input_ids[self.rows, self.columns + 1]

    def scatter(self, values: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """``values`` (S, ...) laid out as the batch's (rows, width, ...), zero elsewhere."""
        out = values.new_zeros((rows, width, *values.shape[1:]))
        return out.index_put((self.rows, self.columns), values)


def per_position(forward: Callable[..., torch.Tensor], input_ids: torch.Tensor, lengths: torch.Tensor | None = None):
    """``forward`` (a model's: ids (B, T) → (B, T, ...), taking ``position_ids`` and ``segment_ids``) at the
    positions that predict the batch's targets, laid out as the batch's (N, L, ...): over ``input_ids[:, :-1]``
    as they are (``lengths`` None), or packed (zero past each row's length)."""
    if lengths is None:
        return forward(input_ids[:, :-1])
    packed = PackedRows.of(input_ids, lengths)
    out = forward(packed.input_ids, position_ids=packed.position_ids, segment_ids=packed.segment_ids)
    return packed.scatter(packed.gather(out), input_ids.shape[0], input_ids.shape[1] - 1)
