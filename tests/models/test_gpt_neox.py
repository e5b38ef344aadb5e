"""zoo's GPT-NeoX against transformers' GPTNeoXForCausalLM, and its KV cache against its own full forward."""

import pytest
import torch
from transformers import GPTNeoXConfig as HFConfig
from transformers import GPTNeoXForCausalLM

from zoo.hub.convert import gpt_neox_config_from_hf, gpt_neox_state_dict_from_hf
from zoo.models import GPTNeoX, GPTNeoXConfig
from zoo.models.gpt_neox import PRESETS

CONFIGS = [
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, rotary_pct=0.25),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=100, rotary_pct=1.0),
    dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        rotary_pct=0.5,
        use_parallel_residual=False,
        attention_bias=False,
        rotary_emb_base=500.0,
    ),
]


def _pair(fields: dict, vocab: int = 97, seed: int = 0):
    torch.manual_seed(seed)
    hf_config = HFConfig(vocab_size=vocab, max_position_embeddings=64, **fields)
    hf_config._attn_implementation = "eager"
    theirs = GPTNeoXForCausalLM(hf_config).eval()
    config = gpt_neox_config_from_hf(hf_config.to_dict())
    ours = GPTNeoX(config).eval()
    ours.load_state_dict(gpt_neox_state_dict_from_hf(theirs.state_dict()))
    return ours, theirs


@pytest.mark.parametrize("fields", CONFIGS)
def test_logits_match_transformers(fields):
    ours, theirs = _pair(fields)
    ids = torch.randint(0, 97, (3, 21))
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("fields", CONFIGS)
def test_cached_logits_match_transformers(fields):
    ours, theirs = _pair(fields, seed=1)
    ids = torch.randint(0, 97, (2, 16))
    cache = ours.new_cache(batch_size=2, max_length=16)
    hf_cache = None
    with torch.no_grad():
        for start, stop in [(0, 9), (9, 10), (10, 13), (13, 16)]:
            out = theirs(ids[:, start:stop], cache=hf_cache, use_cache=True)
            hf_cache = out.cache
            got = ours(ids[:, start:stop], cache=cache)
            assert (got - out.logits).abs().max() <= 1e-5
    assert cache.length == 16


def test_left_padding_matches_transformers():
    ours, theirs = _pair(CONFIGS[0], seed=2)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0  # row 0 is left-padded by 5
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert torch.isfinite(got).all()


def _small(layers: int, seed: int) -> GPTNeoX:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    return GPTNeoX(config).eval()


def test_cached_decoding_equals_full_forward():
    model = _small(layers=3, seed=3)
    ids = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 30)
        steps = [model(ids[:, :7], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(7, 30)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_cache_can_drop_finished_rows():
    model = _small(layers=2, seed=4)
    ids = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3, 12)
        model(ids[:, :8], cache=cache)
        cache.select(torch.tensor([0, 2]))
        rest = torch.cat([model(ids[[0, 2], t : t + 1], cache=cache) for t in range(8, 12)], dim=1)
    assert (rest - full[[0, 2], 8:]).abs().max() <= 1e-5


def test_cache_overflow_is_an_error():
    model = _small(layers=1, seed=0)
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_presets_have_pythia_shapes():
    # Parameter counts of EleutherAI's checkpoints (embedding + head included), e.g. pythia-160m = 162,322,944.
    expected = {"pythia-14m": 14_067_712, "pythia-70m": 70_426_624, "pythia-160m": 162_322_944}
    for name, count in expected.items():
        with torch.device("meta"):
            model = GPTNeoX(PRESETS[name])
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_depth_aware_init_scales_output_projections():
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        intermediate_size=1024,
        initializer_range=0.02,
    )
    model = GPTNeoX(config)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.03)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        GPTNeoXConfig(hidden_size=30, num_attention_heads=4)


def test_packed_segments_equal_separate_sequences():
    model = _small(layers=2, seed=9)
    a, b = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    packed = torch.cat([a, b], 1)
    segments = torch.tensor([[0] * 7 + [1] * 5])
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        together = model(packed, position_ids=positions, segment_ids=segments)
        torch.testing.assert_close(together[:, :7], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(together[:, 7:], model(b), atol=1e-5, rtol=0)
