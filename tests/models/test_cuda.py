"""zoo's GPT-NeoX on a CUDA device: parity with transformers, bf16 training, torch.compile, the fused loss."""

import pytest
import torch
from transformers import GPTNeoXConfig as HFConfig
from transformers import GPTNeoXForCausalLM

from zoo.hub.convert import gpt_neox_config_from_hf, gpt_neox_state_dict_from_hf
from zoo.models import GPTNeoX
from zoo.models.cross_entropy import linear_cross_entropy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEVICE = "cuda"


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def _pair(vocab=1000, hidden=256, layers=4, heads=8):
    torch.manual_seed(0)
    hf_config = HFConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    hf_config._attn_implementation = "sdpa"
    theirs = GPTNeoXForCausalLM(hf_config).to(DEVICE)
    ours = GPTNeoX(gpt_neox_config_from_hf(hf_config.to_dict())).to(DEVICE)
    ours.load_state_dict(gpt_neox_state_dict_from_hf(theirs.state_dict()))
    return ours, theirs


def test_fp32_logits_and_cache_match_transformers():
    ours, theirs = _pair()
    ids = torch.randint(0, 1000, (4, 128), device=DEVICE)
    with torch.no_grad():
        expected = theirs(ids).logits
        assert (ours(ids) - expected).abs().max() <= 1e-4
        cache = ours.new_cache(4, 128)
        steps = [ours(ids[:, :100], cache=cache)] + [ours(ids[:, t : t + 1], cache=cache) for t in range(100, 128)]
        assert (torch.cat(steps, 1) - expected).abs().max() <= 1e-4


def test_bf16_training_step_tracks_transformers():
    ours, theirs = _pair()
    ids = torch.randint(0, 1000, (4, 257), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = ours(ids[:, :-1], targets=ids[:, 1:])
        reference = theirs(input_ids=ids[:, :-1]).logits.float()
        reference = torch.nn.functional.cross_entropy(reference.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-2)
    hf_params = dict(theirs.named_parameters())
    for zoo_name, hf_name in [("lm_head.weight", "lm_head.weight"), ("embed.weight", "gpt_neox.embed_in.weight")]:
        a = dict(ours.named_parameters())[zoo_name].grad.flatten()
        b = hf_params[hf_name].grad.flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, zoo_name


def test_compiled_training_step_equals_eager_and_learns():
    ours, _ = _pair()
    ids = torch.randint(0, 1000, (8, 257), device=DEVICE)

    def step(tokens):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            return ours(tokens[:, :-1], targets=tokens[:, 1:])

    compiled = torch.compile(step)
    with torch.no_grad():
        assert compiled(ids).item() == pytest.approx(step(ids).item(), rel=2e-3)
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-3, fused=True)
    losses = []
    for _ in range(30):
        loss = compiled(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fused_cross_entropy_over_many_chunks_on_cuda(monkeypatch):
    from zoo.models import cross_entropy

    monkeypatch.setitem(cross_entropy.LOGITS_PER_CHUNK, "cuda", 50304 * 1000)
    torch.manual_seed(1)
    hidden = torch.randn(4096, 256, device=DEVICE, requires_grad=True)
    weight = (0.02 * torch.randn(50304, 256, device=DEVICE)).requires_grad_()
    targets = torch.randint(0, 50304, (4096,), device=DEVICE)
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    got = loss.item(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    expected.backward()
    assert got[0] == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], weight.grad, rtol=1e-4, atol=1e-6)
