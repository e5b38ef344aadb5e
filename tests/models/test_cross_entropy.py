"""The fused, chunked output-head cross-entropy against the unfused PyTorch computation."""

import pytest
import torch
import torch.nn.functional as F

from zoo.models import cross_entropy
from zoo.models.cross_entropy import linear_cross_entropy


def _reference(hidden, weight, targets):
    return F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)


@pytest.mark.parametrize("chunk_logits", [1 << 25, 64 * 37])  # one chunk; several uneven chunks
def test_loss_and_gradients_match_unfused(monkeypatch, chunk_logits):
    monkeypatch.setitem(cross_entropy.LOGITS_PER_CHUNK, "cpu", chunk_logits)
    torch.manual_seed(0)
    hidden = torch.randn(300, 24, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 24, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (300,))
    targets[::7] = -100
    loss = linear_cross_entropy(hidden, weight, targets)
    (loss * 3.0).backward()
    got = (loss.detach(), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    expected = _reference(hidden, weight, targets)
    (expected * 3.0).backward()
    torch.testing.assert_close(got[0], expected.detach())
    torch.testing.assert_close(got[1], hidden.grad)
    torch.testing.assert_close(got[2], weight.grad)


def test_without_gradients_it_is_the_plain_loss():
    torch.manual_seed(1)
    hidden, weight = torch.randn(50, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (50,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets), _reference(hidden, weight, targets))


def test_under_bf16_autocast_it_tracks_the_unfused_head():
    torch.manual_seed(2)
    hidden = torch.randn(128, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    targets = torch.randint(0, 64, (128,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    expected = _reference(hidden, weight, targets)
    assert weight.grad.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 0.05 * expected.item()
