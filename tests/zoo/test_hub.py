"""The checkpoint hub: push, list, show, pull, export, verification, and starting a run from an entry."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM
from transformers import GPTNeoXConfig as HFConfig

from zoo.hub import Hub, HubError, validate_name
from zoo.tokenizer import train_bpe


@pytest.fixture
def hf_directory(tmp_path):
    """A local directory in the layout of EleutherAI's Pythia repositories, with random weights."""
    torch.manual_seed(0)
    config = HFConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,
    )
    model = GPTNeoXForCausalLM(config).eval()
    directory = tmp_path / "pythia-mini"
    model.save_pretrained(directory)
    train_bpe(["some text to learn a vocabulary from " * 20], vocab_size=300).save_pretrained(directory)
    return directory, model


def test_push_list_show_from_a_run_directory(run_zoo, trained_run, zoo_env):
    pushed = run_zoo("hub", "push", str(trained_run), "--name", "tiny-stdlib").stdout
    assert "pushed tiny-stdlib" in pushed
    assert "tiny-stdlib" in run_zoo("hub", "list").stdout
    shown = run_zoo("hub", "show", "tiny-stdlib").stdout
    assert "verified: every sha256 matches" in shown and "val/loss" in shown and "model.safetensors" in shown

    entry = Hub().entry("tiny-stdlib")
    model = entry.build_model()
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(model.embed.weight, checkpoint["state_dict"]["model.embed.weight"])
    assert AutoTokenizer.from_pretrained(str(entry.tokenizer_dir)).eos_token_id == 0
    again = run_zoo("hub", "push", str(trained_run), "--name", "tiny-stdlib", check=False)
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("damage", ["flip a byte", "add a file", "remove a file"])
def test_a_damaged_entry_is_refused(run_zoo, trained_run, damage):
    run_zoo("hub", "push", str(trained_run), "--name", "victim")
    entry = Hub().entry("victim")
    if damage == "flip a byte":
        weights = bytearray((entry.path / "model.safetensors").read_bytes())
        weights[-1] ^= 0x01
        (entry.path / "model.safetensors").write_bytes(bytes(weights))
    elif damage == "add a file":
        (entry.path / "extra.bin").write_bytes(b"x")
    else:
        (entry.path / "card.md").unlink()
    with pytest.raises(HubError, match="victim"):
        Hub().entry("victim")
    shown = run_zoo("hub", "show", "victim", check=False)
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", "has space", ".hidden"])
def test_names_with_separators_or_dot_dot_are_refused(name):
    with pytest.raises(HubError, match="invalid hub name"):
        validate_name(name)


def test_hf_directory_imports_with_the_same_logits_and_exports_back(hf_directory, tmp_path):
    directory, reference = hf_directory
    hub = Hub()
    entry = hub.pull(str(directory), name="pythia-mini")
    ours = entry.build_model().eval()
    tokens = torch.randint(0, 320, (2, 17))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert (ours(tokens) - expected).abs().max() <= 1e-5

    exported = hub.export_hf("pythia-mini", tmp_path / "exported")
    reloaded = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    with torch.no_grad():
        assert (reloaded(tokens).logits - expected).abs().max() <= 1e-5
    assert AutoTokenizer.from_pretrained(str(exported))("some text")["input_ids"]


def test_pull_of_a_non_gpt_neox_directory_names_the_problem(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(HubError, match="model_type 'llama'"):
        Hub().pull(str(tmp_path / "llama"))


def test_pull_from_the_hf_hub_offline_fails_in_one_line(run_zoo):
    process = run_zoo("hub", "pull", "hf:EleutherAI/pythia-14m", check=False)
    assert process.returncode == 2
    assert process.stderr.strip().startswith("zoo: error: hf:EleutherAI/pythia-14m: download failed")


def test_fit_from_a_hub_entry_starts_from_its_weights(run_zoo, hf_directory, tmp_path):
    directory, _ = hf_directory
    run_zoo("hub", "pull", str(directory), "--name", "start")
    too_long = run_zoo("fit", "model.init_from=hub:start", check=False)
    assert too_long.returncode == 2
    assert "data.seq_len=128 exceeds the model's max_position_embeddings=64" in too_long.stderr
    run_zoo(
        "fit",
        "model.init_from=hub:start",
        "data.seq_len=32",
        "trainer.max_steps=1",
        "name=warm",
        "module.optim.lr=0.0",
        "trainer.limit_val_batches=0",
        "probes.every_n_steps=0",
    )
    (hydra,) = list((tmp_path / "runs" / "warm").rglob(".hydra"))
    state = torch.load(hydra.parent / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["model"]["hidden_size"] == 32  # the entry's architecture, not the group's
    assert torch.equal(state["state_dict"]["model.embed.weight"], Hub().entry("start").state_dict()["embed.weight"])
    assert (hydra.parent / "tokenizer" / "tokenizer.json").read_text() == (directory / "tokenizer.json").read_text()
