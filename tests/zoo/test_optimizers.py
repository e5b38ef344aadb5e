"""module.optim.name: torch's AdamW or bitsandbytes' 8-bit AdamW (paged or not), for every module."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.optim import OptimConfig, adamw_groups, build_adamw

bnb = pytest.importorskip("bitsandbytes")


def _fit(name: str, steps: int = 60):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1))
    x = torch.randn(256, 64)
    y = x[:, :8].sum(1, keepdim=True)
    optimizer = build_adamw(model, OptimConfig(name=name, lr=3e-3, weight_decay=0.01))
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, optimizer, model


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_adamw_keeps_8_bit_moments_and_tracks_adamw(name):
    exact, _, _ = _fit("adamw")
    losses, optimizer, model = _fit(name)
    assert isinstance(optimizer, bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit)
    big = model[0].weight  # 8,192 elements: quantized; the biases (under 4,096) keep 32-bit moments
    assert optimizer.state[big]["state1"].dtype == torch.uint8 and optimizer.state[big]["state2"].dtype == torch.uint8
    assert optimizer.state[model[0].bias]["state1"].dtype == torch.float32
    assert losses[-1] < 0.1 * losses[0]  # it learns
    assert losses[-1] == pytest.approx(exact[-1], rel=0.25, abs=0.02)  # about as well as AdamW


def test_parameter_groups_keep_their_own_rates_and_decay():
    policy, critic = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
    config = OptimConfig(name="adamw8bit", lr=1e-3, weight_decay=0.1)
    optimizer = build_adamw(adamw_groups(policy, config) + adamw_groups(critic, config, lr=5e-3), config)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 5e-3, 5e-3]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.1, 0.0]


def test_an_unknown_optimizer_is_named():
    with pytest.raises(ConfigError, match="module.optim.name must be one of adamw, adamw8bit, paged_adamw8bit"):
        OptimConfig.from_dict({"name": "sgd"})
