"""Per-token log-probs and entropy (zoo/rl/rollout.py token_logprobs) computed chunk by chunk from the hidden states
equal those of the full (N, L, V) logits, values and gradients, at any chunk size and temperature; a Hugging Face
model goes through its full logits."""

import pytest
import torch

import zoo.rl.rollout as rollout
from zoo.models import build_model, config_from_dict
from zoo.models.interface import HeadOverHiddenStates
from zoo.rl.losses import token_entropy
from zoo.rl.rollout import token_logprobs

CONFIGS = {
    "gpt_neox": dict(arch="gpt_neox", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64),
    "llama": dict(arch="llama", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True),
}  # fmt: skip


def _reference(model, input_ids, temperature):
    logits = model(input_ids[:, :-1]).float() / temperature
    logprobs = torch.log_softmax(logits, -1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return logprobs, token_entropy(logits)


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("chunk_logits", [97 * 5, 1 << 24], ids=["chunks-of-5-tokens", "one-chunk"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_values_and_gradients_equal_the_full_logits(monkeypatch, arch, chunk_logits, temperature):
    torch.manual_seed(0)
    model = build_model(config_from_dict(CONFIGS[arch]))
    assert isinstance(model, HeadOverHiddenStates)
    input_ids = torch.randint(0, 97, (3, 13))
    weights = torch.randn(3, 12)

    expected_lp, expected_h = _reference(model, input_ids, temperature)
    ((expected_lp + 0.1 * expected_h) * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    monkeypatch.setattr(rollout, "LOGITS_PER_CHUNK", chunk_logits)
    logprobs, entropy = token_logprobs(model, input_ids, temperature, with_entropy=True)
    torch.testing.assert_close(logprobs, expected_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, expected_h, rtol=0, atol=1e-5)
    ((logprobs + 0.1 * entropy) * weights).sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_entropy_is_computed_only_when_asked_for():
    torch.manual_seed(0)
    model = build_model(config_from_dict(CONFIGS["gpt_neox"]))
    with torch.no_grad():
        logprobs, entropy = token_logprobs(model, torch.randint(0, 97, (2, 9)))
    assert entropy is None and logprobs.shape == (2, 8) and (logprobs <= 0).all()


def test_a_hugging_face_model_goes_through_its_full_logits(tiny_hf_model):
    model = build_model(config_from_dict(dict(arch="hf", path=str(tiny_hf_model("opt"))))).eval()  # no dropout
    assert not isinstance(model, HeadOverHiddenStates)  # it may post-process its logits
    input_ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        logprobs, entropy = token_logprobs(model, input_ids, 0.8, with_entropy=True)
        expected_lp, expected_h = _reference(model, input_ids, 0.8)
    torch.testing.assert_close(logprobs, expected_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, expected_h, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_under_bf16_autocast_log_probs_stay_fp32_and_near_the_fp32_values_and_gradients(arch):
    """What an RL update computes under Lightning's bf16-mixed precision (autocast around the training step): the
    log-probs come back in fp32 (the log-softmax runs in fp32), within bf16's rounding of the fp32 ones, and the
    policy gradient points the same way."""
    torch.manual_seed(0)
    model = build_model(config_from_dict({**CONFIGS[arch], "hidden_size": 64, "intermediate_size": 128}))
    input_ids = torch.randint(0, 97, (4, 17))
    advantages = torch.randn(4, 16)
    grads = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logprobs, entropy = token_logprobs(model, input_ids, with_entropy=True)
        assert logprobs.dtype == entropy.dtype == torch.float32
        (-(logprobs * advantages).mean()).backward()
        grads.append((logprobs.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (fp32, g32), (bf16, g16) = grads
    assert (bf16 - fp32).abs().max() < 0.05
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
