"""Padding-free rollout rows (zoo/rl/packing.py): every sequence packed once, whole, with positions restarting, into
rows no wider than the longest; log-probs, entropy and critic values of packed forwards equal the padded forwards'
(values and gradients) for every zoo model and a Hugging Face one; a micro-batch's token budget counts its packed
rows."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.models import build_model, config_from_dict
from zoo.models.value import ValueModel
from zoo.rl.packing import PackedRows, per_position
from zoo.rl.rollout import RolloutBatch, token_logprobs


def _padded(lengths, vocab=97, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths) + 3), generator=generator)  # + padding columns
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    return ids


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 40), min_size=1, max_size=24))
def test_every_sequence_is_packed_once_whole_in_rows_no_wider_than_the_longest(lengths):
    ids = _padded(lengths)
    packed = PackedRows.of(ids, torch.tensor(lengths))
    R, W = packed.input_ids.shape
    assert W == max(lengths) and R <= len(lengths)
    assert len(packed) == sum(n - 1 for n in lengths)
    fills = [0] * R
    flat_ids, flat_pos, flat_seg = (t.flatten() for t in (packed.input_ids, packed.position_ids, packed.segment_ids))
    for sequence, n in enumerate(lengths):
        mine = packed.flat[packed.rows == sequence]  # its predicting positions: its first n - 1 tokens, in order
        start, row = int(mine[0]), int(mine[0]) // W
        assert mine.tolist() == list(range(start, start + n - 1)) and (start + n - 1) // W == row  # whole, one row
        assert flat_ids[start : start + n].tolist() == ids[sequence, :n].tolist()
        assert flat_pos[start : start + n].tolist() == list(range(n))
        own = flat_seg[start : start + n]
        assert (own == own[0]).all()
        others = torch.cat([flat_seg[row * W : start], flat_seg[start + n : (row + 1) * W]])
        assert not (others == own[0]).any()  # no other sequence and no padding shares its segment
        fills[row] += n
    # first fit, longest first: no two rows would fit in one
    assert all(fills[i] + fills[j] > W for i in range(R) for j in range(i + 1, R))
    assert (packed.targets(ids) == ids[packed.rows, packed.columns + 1]).all()


def test_scatter_lays_values_out_as_the_batch_zero_past_each_length():
    lengths = [5, 2, 4]
    packed = PackedRows.of(_padded(lengths), torch.tensor(lengths))
    values = torch.arange(1.0, len(packed) + 1)
    out = packed.scatter(values, 3, 6)
    assert out.shape == (3, 6)
    for row, n in enumerate(lengths):
        assert (out[row, : n - 1] > 0).all() and (out[row, n - 1 :] == 0).all()
    assert sorted(out[out > 0].tolist()) == values.tolist()


def _assert_packed_equals_padded(model, lengths, vocab):
    ids = _padded(lengths, vocab)
    lengths = torch.tensor(lengths)
    mask = (torch.arange(ids.shape[1] - 1)[None] < (lengths - 1)[:, None]).float()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask
    outcomes = []
    for packing in (None, lengths):
        model.zero_grad()
        logprobs, entropy = token_logprobs(model, ids, 0.7, with_entropy=True, lengths=packing)
        ((logprobs + 0.1 * entropy) * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outcomes.append((logprobs * mask, entropy * mask, grads))
    (lp, h, grads), (packed_lp, packed_h, packed_grads) = outcomes
    torch.testing.assert_close(packed_lp, lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed_h, h, rtol=0, atol=1e-5)
    assert grads.keys() == packed_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_packed_log_probs_equal_padded_for_every_zoo_model(zoo_model_settings):
    torch.manual_seed(0)
    model = build_model(config_from_dict(zoo_model_settings))
    _assert_packed_equals_padded(model, [11, 3, 7, 5, 2, 9], 97)


def test_packed_log_probs_equal_padded_for_a_hugging_face_model(tiny_hf_model):
    model = build_model(config_from_dict(dict(arch="hf", path=str(tiny_hf_model("llama"))))).eval()
    _assert_packed_equals_padded(model, [9, 4, 6, 2], 50)


def test_packed_critic_values_equal_padded():
    torch.manual_seed(0)
    critic = ValueModel(build_model(config_from_dict(dict(arch="llama", vocab_size=97, hidden_size=32,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, intermediate_size=64,
                                                          max_position_embeddings=64))))  # fmt: skip
    torch.nn.init.normal_(critic.head.weight)
    lengths = torch.tensor([8, 3, 5, 2, 6])  # rows: 8 | 6 + 2 | 5 + 3
    ids = _padded(lengths.tolist())
    mask = (torch.arange(ids.shape[1] - 1)[None] < (lengths - 1)[:, None]).float()
    padded = per_position(critic, ids) * mask
    packed = per_position(critic, ids, lengths)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)


def test_a_packed_micro_batch_counts_its_packed_rows_not_its_rows():
    lengths = [10, 9, 9, 2, 2]
    N, L = len(lengths), 12
    mask = torch.zeros(N, L - 1)
    for row, n in enumerate(lengths):
        mask[row, 1 : n - 1] = 1
    batch = RolloutBatch(_padded(lengths)[:, :L], mask, torch.zeros(N, L - 1), torch.arange(N))
    padded = batch.micro_batch_rows(tokens=20)  # [10, 9], [9, 2], [2]: rows x longest
    packed = batch.micro_batch_rows(tokens=20, packed=True)  # [10, 9], [9, 2 + 2]: packed rows x longest
    for rows in packed:
        part = batch.trimmed(rows)
        assert PackedRows.of(part.input_ids, part.lengths()).input_ids.numel() <= 20  # the forward's tokens
    assert sorted(torch.cat(packed).tolist()) == list(range(N))
    assert (len(packed), len(padded)) == (2, 3)


@pytest.mark.parametrize("lengths", [[2], [5, 5, 5]])
def test_sequences_of_one_length_pack_one_to_a_row(lengths):
    packed = PackedRows.of(_padded(lengths), torch.tensor(lengths))
    assert packed.input_ids.shape == (len(lengths), lengths[0])
