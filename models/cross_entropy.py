"""Next-token cross-entropy fused with the output projection, computed in row chunks.

``linear_cross_entropy(h, W, targets)`` equals ``F.cross_entropy(h @ W.T, targets, ignore_index=-100)`` but
never holds the full (N, vocab) logits: rows are processed ``chunk_rows`` at a time, and when gradients are
needed the forward pass computes them on the spot (d loss / d logits = softmax − one-hot), so the backward pass
only rescales two stored tensors. That saves the memory traffic of the fp32 logits (6.6 GB for Pythia's
50k vocabulary at 16 × 2048 tokens) and the slow log-softmax backward kernel. Logits and softmax are computed in
fp32; under autocast the matmuls run in the autocast dtype, as an unfused head would.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# fp32 logits held at once: 128 MiB on a CPU; 1 GiB on a GPU, where fewer, larger chunks keep the matmuls
# efficient and the fp32 weight-gradient accumulation (one read-modify-write of V × H per chunk) cheap.
LOGITS_PER_CHUNK = {"cpu": 1 << 25, "cuda": 1 << 28}


def _chunk_rows(vocab_size: int, device: torch.device) -> int:
    return max(64, LOGITS_PER_CHUNK.get(device.type, 1 << 25) // vocab_size)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = _chunk_rows(weight.shape[0], hidden.device)
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        precise = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 if given fp64
        loss_sum = torch.zeros((), dtype=precise, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=precise)
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            projected = h @ weight.T  # the autocast dtype under autocast
            log_probs = torch.log_softmax(projected.to(precise), dim=-1)
            keep = t != IGNORE_INDEX
            index = t.clamp(min=0)[:, None]
            loss_sum = loss_sum - (log_probs.gather(1, index).squeeze(1) * keep).sum()
            grad = log_probs.exp_()  # softmax, in place
            grad.scatter_add_(1, index, torch.full_like(index, -1, dtype=grad.dtype))
            grad.mul_(keep[:, None])
            grad = grad.to(projected.dtype)
            grad_hidden[start : start + rows] = grad @ weight
            grad_weight += grad.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_output / count
        return grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype), None


def _chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = _chunk_rows(weight.shape[0], hidden.device)
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    precise = torch.promote_types(weight.dtype, torch.float32)
    total = torch.zeros((), dtype=precise, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        logits = (hidden[start : start + rows] @ weight.T).to(precise)
        t = targets[start : start + rows]
        total = total + torch.nn.functional.cross_entropy(logits, t, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (N, V) against ``targets`` (N,), ignoring -100."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets)
    return _chunked_loss(hidden, weight, targets)
