"""The three embedders: hashing (deterministic), a zoo model mean-pooled, and all-MiniLM-L6-v2 through
sentence-transformers (sha256-checked, against transformers' own forward)."""

import shutil

import pytest
import torch

from zoo.errors import ConfigError
from zoo.synth.embedders import MINILM_SHA256, build_embedder


def test_hashing_embeddings_are_unit_deterministic_and_closer_for_similar_texts():
    embedder = build_embedder({"kind": "hashing", "dim": 256})
    texts = ["the cat sat on the mat", "The cat sat on the mat!", "a cat sat on a mat", "stock prices fell sharply"]
    x = embedder.embed(texts)
    assert x.shape == (4, 256) and torch.allclose(x.norm(dim=1), torch.ones(4))
    assert torch.equal(x, build_embedder({"kind": "hashing", "dim": 256}).embed(texts))
    assert torch.allclose(x[0], x[1])  # case and punctuation do not count
    assert x[0] @ x[2] > x[0] @ x[3]
    assert torch.allclose(embedder.embed([""]).norm(), torch.tensor(1.0))


def test_zoo_model_embeddings_are_the_mean_of_each_texts_hidden_states(trained_run):
    embedder = build_embedder({"kind": "zoo", "model": str(trained_run), "batch_size": 3})
    texts = ["a short one", "a somewhat longer text with more words in it", "mid length text here", "x"]
    batched = embedder.embed(texts)
    for i, text in enumerate(texts):  # alone, unpadded: padding on the right never reaches a text's states
        ids = torch.tensor([embedder.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            mean = embedder.model.hidden_states(ids)[0].mean(0)
        assert torch.allclose(batched[i], torch.nn.functional.normalize(mean, dim=0), atol=1e-5)


def test_minilm_matches_transformers_mean_pooling_and_checks_its_weights(tmp_path):
    pytest.importorskip("sentence_transformers")
    try:
        from zoo.synth.embedders import minilm_directory

        directory = minilm_directory()
    except ConfigError as e:
        pytest.skip(str(e))
    from transformers import AutoModel, AutoTokenizer

    texts = ["How many apples are left?", "The compound was discovered in 1808."]
    x = build_embedder({"kind": "sentence-transformers", "path": "minilm", "device": "cpu"}).embed(texts)
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    assert x.shape == (2, 384) and torch.allclose(x, expected, atol=1e-5)

    damaged = tmp_path / "minilm"
    shutil.copytree(directory, damaged)
    with open(damaged / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ConfigError, match=r"model.safetensors: sha256 .* does not match the expected 53aa5117"):
        build_embedder({"kind": "sentence-transformers", "path": str(damaged), "sha256": MINILM_SHA256})


def test_embedder_settings_are_checked():
    with pytest.raises(ConfigError, match="embedder.kind must be one of"):
        build_embedder({"kind": "word2vec"})
    with pytest.raises(ConfigError, match="unknown embedder setting"):
        build_embedder({"kind": "hashing", "dims": 3})
    with pytest.raises(ConfigError, match="no model.safetensors"):
        build_embedder({"kind": "sentence-transformers", "path": "/nonexistent"})


def test_an_instruction_prompts_its_role_only():
    """``instructions`` put a role's prompt before its texts (what an instruction-aware model such as
    Qwen3-Embedding expects; MiniLM stands in here): the role's embeddings are those of prompt + text, other roles
    are embedded plainly, and a role the pipeline does not have is refused in one line."""
    pytest.importorskip("sentence_transformers")
    try:
        from zoo.synth.embedders import minilm_directory

        minilm_directory()
    except ConfigError as e:
        pytest.skip(str(e))
    prompt = "Instruct: Given a text, retrieve the design logic of a question about it\nQuery:"
    settings = {"kind": "sentence-transformers", "path": "minilm", "device": "cpu"}
    plain = build_embedder(settings)
    instructed = build_embedder({**settings, "instructions": {"segment": prompt}})
    texts = ["The compound was discovered in 1808.", "Iron rusts in wet air."]
    segment = instructed.embed(texts, "segment")
    torch.testing.assert_close(segment, plain.embed([prompt + t for t in texts]), atol=1e-5, rtol=0)
    assert not torch.allclose(segment, plain.embed(texts), atol=1e-3)
    torch.testing.assert_close(instructed.embed(texts, "logic"), plain.embed(texts, "logic"))
    with pytest.raises(ConfigError, match="embedder.instructions: unknown role.*passage"):
        build_embedder({**settings, "instructions": {"passage": prompt}})
