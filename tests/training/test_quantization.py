"""Frozen models in 8-bit and 4-bit (zoo.training.quantization): log-probs within the documented tolerance of the full
model, on the shipped entries and on random configurations of every zoo family, and on a Hugging Face model."""

import copy

import pytest
import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.hub.store import load_model
from zoo.models import GPTNeoXConfig, MeSHConfig, RecursiveConfig, build_model
from zoo.training.quantization import LOGPROB_TOLERANCE, dequantized_weight, quantize_frozen

pytest.importorskip("bitsandbytes")


def _sampled(model: nn.Module, rows: int = 8, prefix: int = 4, length: int = 40, seed: int = 0) -> torch.Tensor:
    """Sequences the model samples itself (what a reference policy scores in RL)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.embed.weight.shape[0], (rows, prefix), generator=generator)
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(model(x)[:, -1].float(), -1)
            x = torch.cat([x, torch.multinomial(probs, 1, generator=generator)], 1)
    return x


def _token_logprobs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(x).float(), -1)[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)


def _mean_logprob_error(model: nn.Module, bits: str) -> float:
    model.eval()
    x = _sampled(model)
    quantized = quantize_frozen(copy.deepcopy(model), bits)
    return float((_token_logprobs(quantized, x) - _token_logprobs(model, x))[:, 3:].abs().mean())


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
@pytest.mark.parametrize("entry", ["pythia-tiny", "mesh-tiny", "arithmetic-sft"])
def test_quantized_shipped_entries_stay_within_the_documented_tolerance(entry, bits):
    model = load_model(f"hub:{entry}").model
    error = _mean_logprob_error(model, bits)
    assert 0 < error <= LOGPROB_TOLERANCE[bits]


@pytest.mark.parametrize(
    "config",
    [
        GPTNeoXConfig(
            vocab_size=200, hidden_size=160, num_hidden_layers=3, num_attention_heads=5, intermediate_size=224
        ),
        RecursiveConfig(vocab_size=150, hidden_size=64, layout="1+2R2+1", num_attention_heads=4, intermediate_size=96),
        MeSHConfig(vocab_size=128, hidden_size=96, layout="1+1R3+1", num_attention_heads=3, intermediate_size=200),
    ],
    ids=["gpt_neox", "recursive", "mesh"],
)
def test_quantized_random_models_stay_within_the_tolerance(config):
    torch.manual_seed(1)
    model = build_model(config)
    for bits in ("8bit", "4bit"):
        assert _mean_logprob_error(model, bits) <= LOGPROB_TOLERANCE[bits]


def test_only_the_block_linears_are_quantized_and_everything_is_frozen():
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = build_model(config)
    embed, head = model.embed.weight.clone(), model.lm_head.weight.clone()
    quantize_frozen(model, "4bit")
    kinds = {type(m).__name__ for m in model.blocks.modules() if "Linear" in type(m).__name__}
    assert kinds == {"Linear4bit"}
    assert torch.equal(model.embed.weight, embed) and torch.equal(model.lm_head.weight, head)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_a_layer_bitsandbytes_cannot_block_stays_full_precision():
    """bitsandbytes' CPU 4-bit kernels pack whole blocks of 32: with hidden 80 (2.5 x 32) every layer reading or
    writing the hidden state stays full precision; with hidden 96 and MLP width 160 all are quantized."""
    config = GPTNeoXConfig(
        vocab_size=64, hidden_size=80, num_hidden_layers=1, num_attention_heads=5, intermediate_size=160
    )
    block = quantize_frozen(build_model(config), "4bit").blocks[0]
    assert all(type(m) is nn.Linear for m in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj))
    config = GPTNeoXConfig(
        vocab_size=64, hidden_size=96, num_hidden_layers=1, num_attention_heads=4, intermediate_size=160
    )
    block = quantize_frozen(build_model(config), "4bit").blocks[0]
    assert all(
        type(m).__name__ == "Linear4bit" for m in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)
    )


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_dequantized_weight_is_what_the_layer_computes_with(bits):
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    model = quantize_frozen(build_model(config), bits)
    layer = model.blocks[0].mlp.fc
    x = torch.randn(5, 64)
    with torch.no_grad():
        for _ in range(2):  # bitsandbytes repacks a CPU 4-bit weight in place at the first inference
            expected = layer(x)
            got = x @ dequantized_weight(layer).float().T + layer.bias
            torch.testing.assert_close(got, expected.float(), rtol=0, atol=2e-2)


def test_a_hugging_face_model_is_quantized_through_its_decoder_layers(tmp_path):
    from transformers import GPTNeoXConfig as HFGPTNeoXConfig
    from transformers import GPTNeoXForCausalLM

    from zoo.models import HFConfig

    torch.manual_seed(0)
    GPTNeoXForCausalLM(
        HFGPTNeoXConfig(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        )
    ).save_pretrained(tmp_path)
    model = build_model(HFConfig(path=str(tmp_path)))
    assert _mean_logprob_error(model, "8bit") <= LOGPROB_TOLERANCE["8bit"]
    quantized = quantize_frozen(model, "4bit")
    assert sum(type(m).__name__ == "Linear4bit" for m in quantized.modules()) == 2 * 4  # qkv, dense, two MLP


def test_an_unknown_precision_is_an_error_naming_the_setting():
    model = build_model(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ConfigError, match="module.algorithm.reference_quantization must be null or one of 8bit, 4bit"):
        quantize_frozen(model, "3bit", "module.algorithm.reference_quantization")


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_an_rl_modules_quantized_reference_scores_within_the_tolerance(bits):
    """module.algorithm.reference_quantization: before any update the reference's log-probs of the policy's own
    samples differ from the policy's by quantization alone."""
    from zoo.modules.grpo import GRPOModule
    from zoo.rl.rollout import RolloutBatch, token_logprobs

    config = {"arch": "gpt_neox", **load_model("hub:pythia-tiny").model.config.to_dict()}
    algorithm = {"kl_coef": 0.04, "reference_quantization": bits}
    module = GRPOModule({**config, "init_from": "hub:pythia-tiny"}, algorithm=algorithm)
    module.configure_model()
    assert type(module.reference.blocks[0].mlp.fc).__name__ == ("Linear8bitLt" if bits == "8bit" else "Linear4bit")
    x = _sampled(module.model.eval())
    rows, width = x.shape
    batch = RolloutBatch(x, torch.ones(rows, width - 1), torch.zeros(rows, width - 1), torch.arange(rows))
    with torch.no_grad():
        error = (module.reference_logprobs(batch) - token_logprobs(module.model, x)[0])[:, 3:].abs().mean()
    assert 0 < error <= LOGPROB_TOLERANCE[bits]
    assert not any(k.startswith("reference.") for k in module.state_dict().keys() - module.rebuilt_entries())


def test_a_lora_policy_has_no_reference_copy_to_quantize():
    from zoo.modules.grpo import GRPOModule

    with pytest.raises(ConfigError, match="a LoRA policy's reference is its own base"):
        GRPOModule(
            {"arch": "gpt_neox", "vocab_size": 64, "lora": {"r": 4}},
            algorithm={"kl_coef": 0.04, "reference_quantization": "8bit"},
        )


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_a_quantized_rollout_replica_follows_the_policy_at_every_sync(bits, family):
    """rollout.quantization: the engine's replica is quantized afresh from the policy's weights at each sync (the
    shipped Pythia; a random Llama with grouped-query attention)."""
    from types import SimpleNamespace

    from zoo.models import LlamaConfig, build_model
    from zoo.rollout.callback import RolloutCallback
    from zoo.training.quantization import load_quantized

    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    policy = (load_model("hub:pythia-tiny").model if family == "gpt_neox" else build_model(llama)).eval()
    callback = RolloutCallback(engine="native", quantization=bits)
    module = SimpleNamespace(model=policy, device=torch.device("cpu"))
    replica = callback.weight_sync.replica(module).eval()
    assert any(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in replica.modules())
    kinds = {name: type(m).__name__ for name, m in replica.named_modules()}
    x = _sampled(policy)
    for step in range(2):
        load_quantized(replica, callback.weight_sync.weights(module))
        assert {name: type(m).__name__ for name, m in replica.named_modules()} == kinds  # a 4-bit layer stays 4-bit
        error = (_token_logprobs(replica, x) - _token_logprobs(policy, x))[:, 3:].abs().mean()
        assert error <= LOGPROB_TOLERANCE[bits], step
        with torch.no_grad():  # an update moves the policy far: a replica that kept its weights would not follow
            for p in policy.blocks.parameters():
                p.add_(torch.randn_like(p) * 0.05)


def test_a_quantized_rollout_needs_the_synchronous_native_engine():
    from zoo.rollout.callback import RolloutCallback

    with pytest.raises(ConfigError, match="rollout.quantization holds the native engine's replica"):
        RolloutCallback(engine="hf", quantization="8bit")
    with pytest.raises(ConfigError, match="rollout.quantization must be null or one of"):
        RolloutCallback(quantization="fp8")
