"""Attention maps from a probed forward: they are the maps the model's own attention applied (probabilities ×
values = the sdpa output), only the layers asked for are shown (and only they compute maps: a Hugging Face model
keeps its attention implementation), in head chunks equal to the whole maps, the forward's outputs do not change,
and zoo's GPT-NeoX shows the maps transformers' eager GPT-NeoX computes."""

import pytest
import torch
from transformers import GPTNeoXConfig as HFNeoXConfig
from transformers import GPTNeoXForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from zoo.hub.convert import gpt_neox_config_from_hf, gpt_neox_state_dict_from_hf
from zoo.models import GPTNeoX, build_model, config_from_dict
from zoo.models.attention_maps import MapRecorder, middle_layers
from zoo.models.hf import HFCausalLM, HFConfig

MESH = dict(arch="mesh", layout="1+2R3+1", vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)  # fmt: skip


def _values(model, out: torch.Tensor) -> torch.Tensor:
    """The values (B, heads, T, head_dim) an attention call's fused projection ``out`` made, a key/value head's
    repeated for each query head it serves."""
    c = model.config
    if c.arch != "llama":  # the NeoX layout: per head [q | k | v]
        return out.view(*out.shape[:2], c.num_attention_heads, 3, c.head_dim)[:, :, :, 2].transpose(1, 2)
    v = out[..., (c.num_attention_heads + c.num_key_value_heads) * c.head_dim :]
    v = v.view(*out.shape[:2], c.num_key_value_heads, c.head_dim).transpose(1, 2)
    return v.repeat_interleave(c.num_attention_heads // c.num_key_value_heads, dim=1)


def test_maps_times_values_reproduce_the_sdpa_output(zoo_model_settings):
    torch.manual_seed(0)
    model = build_model(config_from_dict(zoo_model_settings)).eval()
    values, outputs = [], []  # per attention call, in the order the forward makes them
    heads = model.config.num_attention_heads
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("attn.qkv"):
            hooks.append(module.register_forward_hook(lambda m, a, out: values.append(_values(model, out))))
        if name.endswith("attn.proj"):
            hooks.append(module.register_forward_pre_hook(lambda m, a: outputs.append(a[0])))
    ids = torch.randint(0, 97, (2, 19))
    recorder = MapRecorder(range(model.num_attention_calls))
    with torch.no_grad():
        probed = model(ids, attention_probe=recorder)
        plain = model(ids)
    for hook in hooks:
        hook.remove()
    assert torch.equal(probed, plain)  # the forward's outputs are the normal path's
    assert sorted(recorder.maps) == list(range(model.num_attention_calls)) == list(range(len(values) // 2))
    for layer, maps in recorder.maps.items():
        B, H, T, S = maps.shape
        assert (B, H, T, S) == (2, heads, 19, 19)
        torch.testing.assert_close(maps.sum(-1), torch.ones(B, H, T))
        assert maps.triu(1).abs().max() == 0  # causal
        y = (maps @ values[layer]).transpose(1, 2).reshape(B, T, -1)
        torch.testing.assert_close(y, outputs[layer], atol=1e-5, rtol=1e-4)


def test_only_the_layers_asked_for_are_shown_and_padding_masks_are_honoured():
    torch.manual_seed(0)
    model = build_model(config_from_dict(MESH)).eval()
    recorder = MapRecorder({1, 4})
    ids = torch.randint(1, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        model(ids, attention_mask=mask, attention_probe=recorder)
    assert sorted(recorder.maps) == [1, 4]
    padded = recorder.maps[1][1]
    assert padded[:, 3:, :3].abs().max() == 0  # real tokens never attend to padding
    torch.testing.assert_close(padded.sum(-1), torch.ones(4, 9))


def test_zoo_gpt_neox_maps_equal_transformers_eager_maps_and_the_hf_wrapper_restores_sdpa(tmp_path):
    torch.manual_seed(0)
    hf_config = HFNeoXConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.5,
    )  # fmt: skip
    theirs = GPTNeoXForCausalLM(hf_config).eval()
    theirs.save_pretrained(tmp_path)
    ours = GPTNeoX(gpt_neox_config_from_hf(hf_config.to_dict())).eval()
    ours.load_state_dict(gpt_neox_state_dict_from_hf(theirs.state_dict()))
    wrapped = HFCausalLM(HFConfig(path=str(tmp_path), attn_implementation="sdpa")).eval()
    ids = torch.randint(0, 97, (1, 23))
    mine, peer = MapRecorder({0, 2}), MapRecorder({0, 2})
    with torch.no_grad():
        logits = ours(ids, attention_probe=mine)
        peer_logits = wrapped(ids, attention_probe=peer)
    assert sorted(peer.maps) == [0, 2]
    for layer in (0, 2):
        torch.testing.assert_close(mine.maps[layer], peer.maps[layer], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, peer_logits, atol=1e-4, rtol=1e-4)
    assert wrapped.hf.config._attn_implementation == "sdpa"
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping  # the pass's wrapper is gone
    assert wrapped.num_attention_calls == 3
    eager = HFCausalLM(HFConfig(path=str(tmp_path), attn_implementation="eager")).eval()
    shown = _Chunked({0, 2}, heads_per_map=3)
    with torch.no_grad():
        eager(ids, attention_probe=shown)  # eager attention returns its maps itself, handed on in head chunks
    assert shown.chunks == [3, 1, 3, 1]
    for layer in (0, 2):
        torch.testing.assert_close(shown.maps[layer], peer.maps[layer], atol=1e-5, rtol=1e-4)


class _Chunked(MapRecorder):
    def __init__(self, layers, heads_per_map):
        super().__init__(layers)
        self.heads_per_map, self.chunks = heads_per_map, []

    def observe(self, layer, probabilities):
        self.chunks.append(probabilities.shape[1])
        super().observe(layer, probabilities)


def test_maps_in_head_chunks_equal_the_whole_maps(zoo_model_settings):
    torch.manual_seed(0)
    model = build_model(config_from_dict(zoo_model_settings)).eval()
    ids = torch.randint(0, 97, (2, 13))
    whole, chunked = MapRecorder({0, 1}), _Chunked({0, 1}, heads_per_map=3)
    with torch.no_grad():
        model(ids, attention_probe=whole)
        model(ids, attention_probe=chunked)
    assert chunked.chunks == [3, 1, 3, 1]  # 4 heads: 3 + 1, for each layer
    for layer in (0, 1):
        torch.testing.assert_close(chunked.maps[layer], whole.maps[layer], rtol=0, atol=1e-6)


def test_a_hugging_face_policy_computes_maps_only_for_the_probed_layers_in_its_own_implementation(
    hf_models, monkeypatch
):
    import zoo.models.hf as hf

    model = HFCausalLM(HFConfig(path=str(hf_models["llama"]))).eval()  # grouped-query attention
    seen = []
    show = hf.show_maps

    def spy(probe, layer, *args):
        seen.append((layer, model.hf.config._attn_implementation))
        show(probe, layer, *args)

    monkeypatch.setattr(hf, "show_maps", spy)
    ids = torch.randint(0, 50, (2, 11))
    whole, chunked = MapRecorder({1}), _Chunked({1}, heads_per_map=1)
    with torch.no_grad():
        model(ids, attention_probe=whole)
        model(ids, attention_probe=chunked)
    assert seen == [(1, "sdpa")] * 2
    assert chunked.chunks == [1] * model.hf.config.num_attention_heads
    torch.testing.assert_close(chunked.maps[1], whole.maps[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_policies_show_their_maps(hf_models, arch):
    model = HFCausalLM(HFConfig(path=str(hf_models[arch]))).eval()
    recorder = MapRecorder({model.num_attention_calls - 1})
    ids = torch.randint(0, 50, (1, 11))
    with torch.no_grad():
        probed = model(ids, attention_probe=recorder)
        plain = model(ids)
    (maps,) = recorder.maps.values()
    assert maps.shape[-2:] == (11, 11)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    assert maps.triu(1).abs().max() == 0
    torch.testing.assert_close(probed, plain, atol=1e-4, rtol=1e-4)


def test_middle_third_layers():
    assert middle_layers(12) == [4, 5, 6, 7, 8]
    assert middle_layers(24) == [8, 10, 12, 14, 16]
    assert middle_layers(36) == [12, 15, 18, 21, 24]
    assert middle_layers(3) == [1, 2]
    assert middle_layers(1) == [0]
