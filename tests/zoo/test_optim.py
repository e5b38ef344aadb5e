"""AdamW parameter groups and the warmup + cosine schedule, against their definitions."""

import math

import pytest
from torch import nn

from zoo.errors import ConfigError
from zoo.optim import OptimConfig, build_adamw, warmup_cosine


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

    from zoo.optim import build_schedule

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
