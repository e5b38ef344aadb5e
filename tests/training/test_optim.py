"""AdamW parameter groups, the 8-bit AdamW choices (module.optim.name) and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.training.optim import OptimConfig, adamw_groups, build_adamw, warmup_cosine


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    middle = 10 + 45
    assert warmup_cosine(middle, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer = build_adamw(model, OptimConfig(weight_decay=0.1, lr=1e-3, betas=[0.8, 0.9]))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2} and {p.ndim for p in no_decay["params"]} == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="lr_max"):
        OptimConfig.from_dict({"lr_max": 1.0})


def test_a_warmup_as_long_as_the_run_is_cut_so_the_rate_decays():
    import torch

    from zoo.training.optim import build_schedule

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = build_schedule(optimizer, OptimConfig(lr=1.0, warmup_steps=100, min_lr_ratio=0.1), total_steps=50)
    rates = []
    for _ in range(50):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert max(rates) == pytest.approx(1.0) and rates.index(max(rates)) == 4  # warmed up over 5 steps
    assert rates[-1] < 0.15  # and decayed to about the floor by the end


def test_the_optimizer_settings_are_checked():
    for settings, key in [({"lr": -1.0}, "lr"), ({"betas": [0.9, 1.5]}, "betas"), ({"warmup_steps": -1}, "warmup")]:
        with pytest.raises(ConfigError, match=f"module.optim.{key}"):
            OptimConfig.from_dict(settings)


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
    bnb = pytest.importorskip("bitsandbytes")
    exact, _, _ = _fit("adamw")
    losses, optimizer, model = _fit(name)
    assert isinstance(optimizer, bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit)
    big = model[0].weight  # 8,192 elements: quantized; the biases (under 4,096) keep 32-bit moments
    assert optimizer.state[big]["state1"].dtype == torch.uint8 and optimizer.state[big]["state2"].dtype == torch.uint8
    assert optimizer.state[model[0].bias]["state1"].dtype == torch.float32
    assert losses[-1] < 0.1 * losses[0]  # it learns
    assert losses[-1] == pytest.approx(exact[-1], rel=0.25, abs=0.02)  # about as well as AdamW


def test_parameter_groups_keep_their_own_rates_and_decay():
    pytest.importorskip("bitsandbytes")
    policy, critic = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
    config = OptimConfig(name="adamw8bit", lr=1e-3, weight_decay=0.1)
    optimizer = build_adamw(adamw_groups(policy, config) + adamw_groups(critic, config, lr=5e-3), config)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 5e-3, 5e-3]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.1, 0.0]


def test_an_unknown_optimizer_is_named():  # bitsandbytes or not
    with pytest.raises(ConfigError, match="module.optim.name must be one of adamw, adamw8bit, paged_adamw8bit"):
        OptimConfig.from_dict({"name": "sgd"})
