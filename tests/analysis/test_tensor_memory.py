"""TensorMemory (zoo/analysis/tensor_memory.py) counts the storages a block creates while they live: a tensor's bytes
from creation to release, views and in-place results not again, tensors from before the block not at all; and what
a linear layer keeps for its backward."""

import pytest
import torch

from zoo.analysis.tensor_memory import DeviceMemory, TensorMemory

MIB = 2**20


def test_storages_are_counted_while_they_live_and_the_peak_is_kept():
    before = torch.ones(MIB)
    with TensorMemory() as memory:
        a = torch.ones(MIB // 4)  # 1 MiB of fp32
        assert memory.current == MIB
        view, doubled = a[:10], a.mul_(2)  # a view and an in-place result: the same storage
        b = before + 1  # a new storage from an older tensor
        assert memory.current == 5 * MIB
        del a, view, doubled, b
        assert memory.current == 0
    assert memory.peak == 5 * MIB


def test_a_linear_layer_keeps_its_relu_output_for_backward_and_makes_its_gradients():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    with TensorMemory() as memory:
        y = layer(x).relu()  # the linear's output is freed; relu keeps its own output
        assert memory.current == 64 * 256 * 4
        y.sum().backward()
        del y
        assert memory.current == (256 * 256 + 256) * 4  # the gradients


def test_a_limit_raises_out_of_memory_as_a_device_of_that_size_would():
    with TensorMemory(limit=3 * MIB) as memory:
        kept = torch.ones(MIB // 2)  # 2 MiB
        with pytest.raises(torch.OutOfMemoryError, match="past the limit of 3145728 bytes"):
            torch.ones(MIB // 2)  # 4 MiB held: past the limit
        del kept
    assert memory.peak == 4 * MIB and memory.current == 0


def test_device_memory_on_the_cpu_counts_as_tensor_memory_does():
    with DeviceMemory(torch.device("cpu")) as memory:
        kept = torch.ones(MIB // 4)
        assert memory.now() == MIB
        torch.ones(MIB // 2)  # 2 MiB, freed at once
        del kept
    assert memory.peak == 3 * MIB
