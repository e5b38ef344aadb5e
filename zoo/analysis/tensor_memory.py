"""Tensor memory a block of code holds, now and at its peak, on any device: every tensor storage an operator creates
inside the block is counted from its creation until it is freed (a view or an in-place result is the storage it
shares). The CPU allocator keeps no peak of its own; on a GPU this counts what ``torch.cuda.max_memory_allocated``
counts, without the allocator's rounding and cache. Tensors made before the block (parameters) are not counted.
With a ``limit`` (bytes) an operator whose outputs would take the block past it raises ``torch.OutOfMemoryError``,
as a device of that size would: what fits in how much memory can be checked on any machine. :class:`DeviceMemory`
reads the CUDA allocator's counters on a GPU and counts with :class:`TensorMemory` elsewhere (the benchmarks' meter).

    with TensorMemory() as memory:
        loss = model(batch).sum()
        held = memory.current      # what the forward keeps for the backward
        loss.backward()
    print(memory.peak)
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """Bytes of tensor storage the block created that are alive (``current``) and the most at any moment (``peak``)."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
        inputs = {v.untyped_storage().data_ptr() for v in tensors}
        for value in tree_flatten(out)[0]:  # new storages only: not a view, not an input written in place
            if isinstance(value, torch.Tensor) and not value._is_view():
                storage = value.untyped_storage()
                if storage.data_ptr() not in inputs:
                    self._count(storage)
        return out

    def _count(self, storage) -> None:
        key = id(storage)
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)
        if self.limit is not None and self.current > self.limit:
            raise torch.OutOfMemoryError(
                f"{self.current} bytes of tensors held, past the limit of {self.limit} bytes (TensorMemory)"
            )

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)


class DeviceMemory:
    """Tensor memory on ``device`` inside the block, above what was allocated when it began, ``now()`` and at its
    ``peak`` (bytes, after the block): the CUDA allocator's counters on a GPU, :class:`TensorMemory` elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> DeviceMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.tracker = TensorMemory().__enter__()
        return self

    def now(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated() - self.start
        return self.tracker.current

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.tracker.__exit__(*exc)
            self.peak = self.tracker.peak
