"""MeSH against the paper's algebra: router count, convex reads, exact reduction to base and +residual."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models import MeSH, MeSHConfig, RecursiveConfig, RecursiveGPTNeoX, config_from_dict

DIMS = dict(vocab_size=90, hidden_size=40, num_attention_heads=4, intermediate_size=80, max_position_embeddings=64)


def _router_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if "routers" in n)


def test_router_count_of_the_paper_1_4b_config():
    config = MeSHConfig(
        vocab_size=50304, hidden_size=2048, num_attention_heads=16, intermediate_size=8192, layout="4+8R2+4"
    )
    with torch.device("meta"):
        model = MeSH(config)
    assert config.slots == 5
    assert _router_parameters(model) == 61_470  # 2 · (2 + 1) · (2048 · 5 + 5), paper App. E.3


@pytest.mark.parametrize("layout, slots", [("1+2R3+1", None), ("2+1R4+0", 4), ("0+2R1+2", 9)])
def test_router_count_formula(layout, slots):
    config = MeSHConfig(**DIMS, layout=layout, buffer_slots=slots)
    expected = 2 * (config.num_loops + 1) * (40 * config.slots + config.slots)
    assert _router_parameters(MeSH(config)) == expected


def test_read_and_write_weights_sum_to_one_per_token():
    torch.manual_seed(0)
    model = MeSH(MeSHConfig(**DIMS, layout="1+1R3+1"))
    state = torch.randn(3, 7, 40)
    for pair in range(4):
        w, r = model.routing(state, pair)
        assert w.shape == r.shape == (3, 7, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))
        torch.testing.assert_close(r.sum(-1), torch.ones(3, 7))
        assert (w > 0).all() and (r > 0).all()


def _one_hot_routers(model, write_slots, read_slots):
    """Zero router weights and a dominant bias: every token writes to and reads from the given slots."""
    with torch.no_grad():
        for routers, slots in ((model.write_routers, write_slots), (model.read_routers, read_slots)):
            for router, slot in zip(routers, slots, strict=True):
                router.weight.zero_()
                router.bias.fill_(0.0)
                router.bias[slot] = 1e4


def _pair(layout, recurrence, slots=None, seed=0):
    torch.manual_seed(seed)
    mesh = MeSH(MeSHConfig(**DIMS, layout=layout, buffer_slots=slots)).eval()
    reference = RecursiveGPTNeoX(RecursiveConfig(**DIMS, layout=layout, recurrence=recurrence)).eval()
    reference.load_state_dict({k: v for k, v in mesh.state_dict().items() if "routers" not in k})
    return mesh, reference


@pytest.mark.parametrize("layout", ["1+2R2+1", "2+1R4+1", "0+2R3+0"])
def test_fresh_slot_routing_reproduces_the_base_recurrence(layout):
    mesh, base = _pair(layout, "base")
    loops = mesh.config.num_loops
    # transitional cycle: slot 1; loop t: slot t + 2 (B = K + 3 >= K + 2 slots)
    _one_hot_routers(mesh, [1, *range(2, loops + 2)], [1, *range(2, loops + 2)])
    ids = torch.randint(0, 90, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(mesh(ids), base(ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["1+2R2+1", "1+1R5+2"])
def test_one_accumulating_slot_reproduces_the_residual_recurrence(layout):
    mesh, residual = _pair(layout, "residual", slots=3)
    loops = mesh.config.num_loops
    _one_hot_routers(mesh, [1] * (loops + 1), [1] * (loops + 1))
    ids = torch.randint(0, 90, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(mesh(ids), residual(ids), rtol=0, atol=1e-5)


def _buffer_forward(model, ids):
    """MeSH written literally from the notes' pseudocode: an explicit (slots x hidden) buffer per token."""
    c = model.config
    inputs = model.attention_inputs(ids, None, None, None, torch.float32)
    h_emb = model.embed_tokens(ids)
    x = model.run_stage(model.prelude, h_emb, inputs, 0)
    buffer = torch.zeros(*h_emb.shape[:2], c.slots, c.hidden_size)
    buffer[:, :, 0] = h_emb  # Eq. 2
    w, r = model.routing(x, 0)
    buffer = buffer + w[..., None] * x[:, :, None]  # transitional write
    h = (buffer * r[..., None]).sum(2)  # and read
    for t in range(c.num_loops):
        w, r = model.routing(h, t + 1)  # Eq. 3
        h_m = model.run_stage(model.core, h, inputs, model.core_entry(t))  # Eq. 4
        buffer = buffer + w[..., None] * h_m[:, :, None]  # Eq. 5: every slot b gets h_m * w_b
        h = (buffer * r[..., None]).sum(2)  # read from the updated buffer
    out = model.run_stage(model.coda, h, inputs, model.core_entry(c.num_loops))
    return model.lm_head(model.norm(out))


@pytest.mark.parametrize("layout, slots", [("1+2R2+1", None), ("0+1R4+1", 3), ("2+1R1+0", 7)])
def test_forward_equals_the_explicit_buffer_equations(layout, slots):
    torch.manual_seed(5)
    model = MeSH(MeSHConfig(**DIMS, layout=layout, buffer_slots=slots)).eval()
    with torch.no_grad():  # routers far from uniform, so that every slot matters
        for router in [*model.write_routers, *model.read_routers]:
            router.weight.normal_(0, 0.5)
            router.bias.normal_(0, 1.0)
    ids = torch.randint(0, 90, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _buffer_forward(model, ids), rtol=1e-5, atol=1e-5)


def test_cached_decoding_equals_the_full_forward():
    torch.manual_seed(2)
    model = MeSH(MeSHConfig(**DIMS, layout="1+2R2+1")).eval()
    ids = torch.randint(0, 90, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 20)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(6, 20)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_loss_falls_when_trained():
    torch.manual_seed(3)
    model = MeSH(MeSHConfig(**DIMS, layout="1+1R2+1"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 90, (8, 33))
    losses = []
    for _ in range(40):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_round_trips_and_validates():
    config = MeSHConfig(**DIMS, layout="3+5R2+3", buffer_slots=6)
    assert config_from_dict(config.to_dict()) == config and config.to_dict()["arch"] == "mesh"
    assert "recurrence" not in config.to_dict()
    with pytest.raises(ConfigError, match="buffer_slots"):
        MeSHConfig(**DIMS, buffer_slots=0)
