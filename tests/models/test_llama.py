"""zoo's Llama family against transformers' own classes: logits on random configurations of every family, packed
rows, the native engine's greedy tokens, and the round trip of config and weights."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from zoo.errors import ConfigError
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.hub.convert import llama_config_from_hf, llama_config_to_hf, llama_state_dict_from_hf, llama_state_dict_to_hf
from zoo.models import build_model, config_from_dict
from zoo.models.llama import Llama, LlamaConfig

SMALL = dict(vocab_size=96, hidden_size=48, num_hidden_layers=2, intermediate_size=80, max_position_embeddings=64)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
FAMILIES = {
    "llama-gqa-llama3-rope": (
        "llama",
        dict(num_attention_heads=6, num_key_value_heads=2, rope_parameters=LLAMA3, mlp_bias=True, rope_theta=500000.0),
    ),  # fmt: skip
    "llama-tied-bias-linear-rope": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            attention_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0},
        ),
    ),  # fmt: skip
    "qwen2-bias-tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3-qk-norm-head-dim": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "mistral-sliding-window": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=5)),
}


def _pair(family: str, seed: int = 0):
    """A transformers model of ``family`` with random weights (spread wider than its init, so logits differ) and
    zoo's Llama built from its config and weights."""
    model_type, settings = FAMILIES[family]
    torch.manual_seed(seed)
    hf_config = AutoConfig.for_model(model_type, **SMALL, **settings)
    hf = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    config = llama_config_from_hf(hf_config.to_dict())
    model = Llama(config).eval()
    model.load_state_dict(llama_state_dict_from_hf(hf.state_dict(), config))
    return hf, model


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
    hf, model = _pair(family)
    ids = torch.randint(0, 96, (3, 20))  # past the sliding window and llama3's original context
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
    assert (got - expected).abs().max() < 1e-5
    assert expected.std() > 0.5  # the weights make logits that differ


@pytest.mark.parametrize("family", ["llama-gqa-llama3-rope", "qwen3-qk-norm-head-dim"])
def test_packed_rows_equal_separate_forwards(family):
    _, model = _pair(family)
    first, second = torch.randint(0, 96, (1, 7)), torch.randint(0, 96, (1, 5))
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    segments = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        together = model(packed, position_ids=positions, segment_ids=segments)
        apart = torch.cat([model(first), model(second)], dim=1)
    assert (together - apart).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["llama-gqa-llama3-rope", "qwen2-bias-tied", "qwen3-qk-norm-head-dim"])
def test_greedy_tokens_of_the_native_engine_are_transformers(family):
    hf, model = _pair(family, seed=1)
    prompts = [torch.randint(3, 96, (n,)).tolist() for n in (5, 9, 3)]
    result = NativeEngine(model).generate(prompts, 1, SamplingParams(max_new_tokens=16, temperature=0.0))
    for prompt, sample in zip(prompts, sorted(result.samples, key=lambda s: s.prompt_index), strict=True):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                               pad_token_id=0, min_new_tokens=16)[0, len(prompt):]  # fmt: skip
        assert sample.token_ids == expected.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_config_and_weights_load_in_transformers_with_the_same_logits(family, tmp_path):
    _, model = _pair(family, seed=2)
    values = llama_config_to_hf(model.config)
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    assert llama_config_from_hf(hf_config.to_dict()) == model.config  # the round trip keeps every field
    hf = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    missing, unexpected = hf.load_state_dict(llama_state_dict_to_hf(model.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    ids = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5


def test_the_family_is_built_from_its_config_dict_and_checks_it():
    config = config_from_dict({"arch": "llama", **SMALL, "num_attention_heads": 4, "num_key_value_heads": 2})
    model = build_model(config)
    assert isinstance(model, Llama) and model.new_cache(2, 8).keys.shape[2] == 2  # the cache holds KV heads only
    with pytest.raises(ConfigError, match="not a multiple of num_key_value_heads"):
        LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="rope_scaling type 'yarn'"):
        LlamaConfig(**SMALL, num_attention_heads=4, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ConfigError, match=r"rope_scaling \(llama3\) needs low_freq_factor, high_freq_factor"):
        LlamaConfig(**SMALL, num_attention_heads=4, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ConfigError, match="model.rope_scaling.factor must be a number > 0, got 0"):
        LlamaConfig(**SMALL, num_attention_heads=4, rope_scaling={"rope_type": "linear", "factor": 0})
    with pytest.raises(ConfigError, match="high_freq_factor must exceed low_freq_factor"):
        LlamaConfig(**SMALL, num_attention_heads=4, rope_scaling={**LLAMA3, "high_freq_factor": 1.0})
    with pytest.raises(ConfigError, match="sliding window of 5 is not built yet"):
        Llama(LlamaConfig(**SMALL, num_attention_heads=4, sliding_window=5)).new_cache(1, 8)


@pytest.mark.parametrize("mask_kind", ["none", "additive", "boolean"])
def test_the_decode_step_attention_is_sdpas(mask_kind):
    """One query a row over cached keys (the native engine's decode step) takes plain matmuls: sdpa's result."""
    import torch.nn.functional as F

    attention = Llama(LlamaConfig(**SMALL, num_attention_heads=6, num_key_value_heads=2)).blocks[0].attn
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 1, 8), torch.randn(3, 2, 11, 8), torch.randn(3, 2, 11, 8)
    valid = torch.rand(3, 11) > 0.3
    valid[:, -1] = True
    mask = {"none": None, "boolean": valid[:, None, None],
            "additive": torch.zeros(3, 11).masked_fill(~valid, float("-inf"))[:, None, None]}[mask_kind]  # fmt: skip
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(attention._decode_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama-gqa-llama3-rope", "qwen2-bias-tied"])
def test_the_hf_engine_serves_zoos_llama_through_its_transformers_view(family):
    from zoo.generation.hf import HFEngine

    _, model = _pair(family, seed=3)
    engine = HFEngine(model.config)
    engine.load_weights(model.named_parameters())  # zoo's names, renamed as a weight sync sends them
    prompts = [torch.randint(3, 96, (n,)).tolist() for n in (4, 7)]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    served = sorted(engine.generate(prompts, 1, params).samples, key=lambda s: s.prompt_index)
    native = sorted(NativeEngine(model).generate(prompts, 1, params).samples, key=lambda s: s.prompt_index)
    assert [s.token_ids for s in served] == [s.token_ids for s in native]
