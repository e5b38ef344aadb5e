"""The resumable training loader: seeded epochs, rank shards, and an exact continuation after a restart."""

import torch
from torch.utils.data import TensorDataset

from zoo.text.loader import EpochOrder, ResumableLoader


def _batches(loader):
    return [batch[0].tolist() for batch in loader]


def test_each_epoch_is_a_fresh_seeded_permutation():
    order = EpochOrder(20, seed=3, shuffle=True, rank=0, world_size=1)
    first = list(order)
    assert sorted(first) == list(range(20))
    assert list(order) == first  # same epoch, same order
    order.set_epoch(1)
    assert list(order) != first and sorted(order) == list(range(20))


def test_ranks_get_disjoint_equal_shares():
    shares = [list(EpochOrder(23, seed=0, shuffle=True, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 7 for s in shares)
    assert len(set().union(*map(set, shares))) == 21


def test_resumed_loader_continues_with_the_next_batch():
    data = TensorDataset(torch.arange(40))
    reference = ResumableLoader(data, 4, seed=7)
    reference.order.set_epoch(2)
    expected = _batches(reference)

    interrupted = ResumableLoader(data, 4, seed=7)
    interrupted.order.set_epoch(2)
    iterator = iter(interrupted)
    consumed = [next(iterator)[0].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_done": 3}

    resumed = ResumableLoader(data, 4, seed=7)
    resumed.load_state_dict(state)
    assert consumed + _batches(resumed) == expected
    assert len(resumed) == 10  # the epoch's full length, as Lightning expects of a resumable loader
    assert _batches(resumed) == expected  # the offset applied to one iteration only


def test_a_loader_resumed_twice_continues_from_the_second_state():
    data = TensorDataset(torch.arange(40))
    expected = _batches(ResumableLoader(data, 4, seed=3))
    first = ResumableLoader(data, 4, seed=3)
    iterator = iter(first)
    seen = [next(iterator)[0].tolist() for _ in range(3)]
    second = ResumableLoader(data, 4, seed=3)
    second.load_state_dict(first.state_dict())  # resume, then train two more batches
    iterator = iter(second)
    seen += [next(iterator)[0].tolist() for _ in range(2)]
    assert second.state_dict() == {"epoch": 0, "batches_done": 5}  # counted from the resumed offset, not from 0
    third = ResumableLoader(data, 4, seed=3)
    third.load_state_dict(second.state_dict())  # killed again: resume
    assert seen + _batches(third) == expected  # no batch replayed, none skipped


def test_state_at_an_epoch_end_resumes_at_the_next_epoch_start():
    data = TensorDataset(torch.arange(12))
    loader = ResumableLoader(data, 4, seed=1)
    _batches(loader)
    resumed = ResumableLoader(data, 4, seed=1)
    resumed.load_state_dict(loader.state_dict())
    resumed.order.set_epoch(1)
    assert len(_batches(resumed)) == 3
