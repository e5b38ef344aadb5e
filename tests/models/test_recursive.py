"""The recursive transformer: layout parsing, Eq. 1's recurrences, reduction to GPT-NeoX, init, KV cache."""

import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models import GPTNeoX, GPTNeoXConfig, RecursiveConfig, RecursiveGPTNeoX, config_from_dict
from zoo.models.recursive import PRESETS

DIMS = dict(vocab_size=80, hidden_size=48, num_attention_heads=4, intermediate_size=96, max_position_embeddings=64)


def _model(layout, recurrence="base", seed=0, **kwargs):
    torch.manual_seed(seed)
    return RecursiveGPTNeoX(RecursiveConfig(**DIMS, layout=layout, recurrence=recurrence, **kwargs)).eval()


@pytest.mark.parametrize(
    "layout, parts, unique, compute",
    [("4+8R2+4", (4, 8, 2, 4), 16, 24), ("3+6R3+3", (3, 6, 3, 3), 12, 24), ("0+3R4+1", (0, 3, 4, 1), 4, 13)],
)
def test_layout_notation(layout, parts, unique, compute):
    c = RecursiveConfig(**DIMS, layout=layout)
    assert (c.prelude_layers, c.core_layers, c.num_loops, c.coda_layers) == parts
    assert c.num_hidden_layers == unique and c.num_compute_layers == compute
    assert len(RecursiveGPTNeoX(c).core) == parts[1]


@pytest.mark.parametrize("layout", ["4+8x2+4", "4+0R2+4", "8R2", "1+2R0+1"])
def test_bad_layouts_are_refused(layout):
    with pytest.raises(ConfigError, match="layout"):
        RecursiveConfig(**DIMS, layout=layout)


def test_unknown_recurrence_is_refused():
    with pytest.raises(ConfigError, match="recurrence 'anchor2'"):
        RecursiveConfig(**DIMS, recurrence="anchor2")


def test_one_loop_without_recurrence_is_the_plain_stack():
    torch.manual_seed(0)
    plain = GPTNeoX(GPTNeoXConfig(**DIMS, num_hidden_layers=5)).eval()
    looped = _model("2+2R1+1", scale_embeddings=False)
    state = {}
    for name, tensor in plain.state_dict().items():
        if name.startswith("blocks."):
            index, rest = name.split(".", 2)[1:]
            index = int(index)
            stage, i = ("prelude", index) if index < 2 else ("core", index - 2) if index < 4 else ("coda", index - 4)
            name = f"{stage}.{i}.{rest}"
        state[name] = tensor
    looped.load_state_dict(state)
    ids = torch.randint(0, 80, (2, 20))
    with torch.no_grad():
        assert torch.equal(looped(ids), plain(ids))


@pytest.mark.parametrize("recurrence", ["base", "residual", "anchor", "anchor_emb"])
def test_each_recurrence_follows_equation_1(recurrence):
    model = _model("1+2R3+1", recurrence)
    ids = torch.randint(0, 80, (2, 12))
    trace = model.trace(ids)
    supplement = {
        "base": lambda t: 0,
        "residual": lambda t: trace.states[f"h{t}"],
        "anchor": lambda t: trace.states["h0"],
        "anchor_emb": lambda t: trace.states["h_emb"],
    }[recurrence]
    for t in range(3):
        core_in, core_out = trace.updates[f"core{t + 1}"]
        assert torch.equal(core_in, trace.states[f"h{t}"])
        torch.testing.assert_close(trace.states[f"h{t + 1}"], core_out + supplement(t))
    assert torch.equal(trace.updates["coda"][0], trace.states["h3"])


def test_embeddings_are_scaled_by_sqrt_d():
    model = _model("1+1R2+1")
    ids = torch.randint(0, 80, (1, 5))
    torch.testing.assert_close(model.trace(ids).states["h_emb"], model.embed(ids) * math.sqrt(48))


def test_depth_aware_init_counts_the_unrolled_graph():
    torch.manual_seed(0)
    c = RecursiveConfig(
        vocab_size=64,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=1024,
        layout="2+4R2+2",
        initializer_range=0.02,
    )
    model = RecursiveGPTNeoX(c)
    projections = torch.cat([b.mlp.proj.weight.flatten() for b in model.core])
    assert projections.std().item() == pytest.approx(0.02 / math.sqrt(2 * 12), rel=0.02)


@pytest.mark.parametrize("recurrence", ["base", "anchor_emb"])
def test_cached_decoding_equals_the_full_forward(recurrence):
    model = _model("1+2R2+1", recurrence, seed=3)
    ids = torch.randint(0, 80, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 24)
        assert cache.keys.shape[0] == 6  # one entry per block application
        steps = [model(ids[:, :9], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(9, 24)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_config_round_trips_through_a_dict():
    config = PRESETS["recursive-410m-r3"]
    assert config.layout == "3+6R3+3" and config.hidden_size == 1024
    again = config_from_dict(config.to_dict())
    assert again == config and "num_hidden_layers" not in config.to_dict()
