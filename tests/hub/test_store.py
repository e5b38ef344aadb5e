"""The checkpoint hub: push, list, show, pull, export, verification, and starting a run from an entry."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM
from transformers import GPTNeoXConfig as HFConfig

from zoo.errors import ConfigError
from zoo.hub.store import Hub, HubError, validate_name
from zoo.text.tokenizer import train_bpe


def _published(hub: Hub) -> list:
    """The entries of the hub's own store (not the read-only ones that ship with zoo)."""
    return [e for e in hub.entries() if not getattr(e, "read_only", False)]


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
    assert "Trained with `zoo fit model.hidden_size=32 " in shown and " debug=limit name=tiny`" in shown  # the command

    entry = Hub().entry("tiny-stdlib")
    model = entry.build_model()
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(model.embed.weight, checkpoint["state_dict"]["model.embed.weight"])
    assert AutoTokenizer.from_pretrained(str(entry.tokenizer_dir)).eos_token_id == 0
    again = run_zoo("hub", "push", str(trained_run), "--name", "tiny-stdlib", check=False)
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("damage", ["flip a byte", "add a file", "remove a file"])
def test_a_damaged_entry_is_refused(trained_run, damage, capsys):
    from zoo.cli import main

    entry = Hub().push(trained_run, "victim")
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
    with pytest.raises(SystemExit) as shown:
        main(["hub", "show", "victim"])
    assert shown.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("manifest", [b"\xff\xfe not utf-8", b"\x80\x81 not utf-8", b"[]", b""])
def test_one_unreadable_manifest_spoils_only_its_own_entry(run_zoo, trained_run, manifest):
    """``zoo hub list`` lists the rest and marks it; ``zoo hub show`` of a missing name still says which exist."""
    Hub().push(trained_run, "good")
    (Hub().push(trained_run, "bad").path / "manifest.json").write_bytes(manifest)
    listed = run_zoo("hub", "list")
    assert "good" in listed.stdout and "unreadable" in listed.stdout and "Traceback" not in listed.stderr
    missing = run_zoo("hub", "show", "nothing", check=False)
    assert missing.returncode == 2 and "known: " in missing.stderr and "good" in missing.stderr
    bad = run_zoo("hub", "show", "bad", check=False)
    assert bad.returncode == 2 and "manifest" in bad.stderr and "Traceback" not in bad.stderr


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


def test_pull_of_a_directory_transformers_cannot_build_names_the_problem(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(HubError, match="llama: no model.safetensors or pytorch_model.bin"):
        Hub().pull(str(tmp_path / "llama"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (tmp_path / "odd" / "model.safetensors").write_bytes(b"")
    with pytest.raises(HubError, match="model_type 'no-such-architecture' is not a causal LM"):
        Hub().pull(str(tmp_path / "odd"))


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


def test_names_with_dot_dot_inside_are_refused():
    with pytest.raises(HubError, match="invalid hub name"):
        validate_name("a..b")
    assert validate_name("a.b-c_1") == "a.b-c_1"


@pytest.mark.parametrize("file", ["config.json", "card.md", "tokenizer/tokenizer.json", "model.safetensors"])
def test_every_listed_file_is_sha256_checked(hf_directory, file):
    entry = Hub().pull(str(hf_directory[0]), name="checked")
    with open(entry.path / file, "ab") as f:
        f.write(b" ")
    with pytest.raises(HubError, match=f"{file} fails its sha256 check"):
        Hub().entry("checked")


@pytest.mark.parametrize("extra", ["manifest.json.bak", "tokenizer/manifest.json", "sub/manifest.json", ".hidden"])
def test_any_file_the_manifest_does_not_list_is_tampering(hf_directory, extra):
    entry = Hub().pull(str(hf_directory[0]), name="tampered")
    (entry.path / extra).parent.mkdir(exist_ok=True)
    (entry.path / extra).write_text("{}")
    with pytest.raises(HubError, match=f"not in its manifest: {extra}"):
        Hub().entry("tampered")


def test_a_manifest_listing_paths_outside_the_entry_is_refused(hf_directory):
    entry = Hub().pull(str(hf_directory[0]), name="escape")
    manifest = json.loads((entry.path / "manifest.json").read_text())
    manifest["files"]["../outside"] = "0" * 64
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HubError, match="outside the entry"):
        Hub().entry("escape")


def test_export_never_deletes_what_the_target_holds(hf_directory, tmp_path, capsys):
    from zoo.cli import main

    Hub().pull(str(hf_directory[0]), name="mini")
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "thesis.tex").write_text("years of work")
    (home / "config.json").write_text("an old config")
    with pytest.raises(SystemExit) as refused:
        main(["hub", "export", "mini", str(home)])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "not empty" in err and len(err.splitlines()) == 1
    assert (home / "config.json").read_text() == "an old config"
    main(["hub", "export", "mini", str(home), "--force"])
    assert (home / "notes" / "thesis.tex").read_text() == "years of work"  # only the model's files were written
    assert json.loads((home / "config.json").read_text())["model_type"] == "gpt_neox"
    assert AutoModelForCausalLM.from_pretrained(str(home)).config.hidden_size == 32
    empty = tmp_path / "empty"
    empty.mkdir()
    main(["hub", "export", "mini", str(empty)])  # an empty or new directory needs no --force
    assert (empty / "model.safetensors").is_file()


def test_pull_refuses_weights_that_do_not_fill_the_config(hf_directory, tmp_path):
    directory, model = hf_directory
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((directory / "config.json").read_text())
    save_file({"gpt_neox.embed_in.weight": model.gpt_neox.embed_in.weight.detach()}, partial / "model.safetensors")
    with pytest.raises(HubError, match="weights do not match its config: missing blocks.0"):
        Hub().pull(str(partial))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    head = "lm_head.weight" if "lm_head.weight" in state else "embed_out.weight"  # transformers 5 / 4 name
    state[head] = state[head][:, :16].contiguous()
    save_file(state, partial / "model.safetensors")
    with pytest.raises(HubError, match=r"lm_head.weight has shape \(320, 16\), the config needs \(320, 32\)"):
        Hub().pull(str(partial))
    assert _published(Hub()) == []  # nothing was published


@pytest.mark.parametrize("content", [b"not a pickle at all", "pickle of a string"])
def test_pull_of_a_bin_that_is_not_weights_fails_in_one_line(hf_directory, tmp_path, content, capsys):
    from zoo.cli import main

    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "config.json").write_text((hf_directory[0] / "config.json").read_text())
    if isinstance(content, str):
        torch.save({"weights": content}, directory / "pytorch_model.bin")
    else:
        (directory / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(SystemExit) as pulled:
        main(["hub", "pull", str(directory)])
    err = capsys.readouterr().err
    assert pulled.value.code == 2 and len(err.strip().splitlines()) == 1 and "pytorch_model.bin: not" in err


def test_a_killed_push_leaves_nothing_in_the_list_and_its_leftovers_are_removed(hf_directory, zoo_env):
    hub = Hub()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended: its temporaries are stale
    leftover = hub.store / f".half.{pid}.abc123.tmp"
    (leftover / "tokenizer").mkdir(parents=True)
    (leftover / "manifest.json").write_text(json.dumps({"name": "half", "files": {}}))
    stale_file = hub.store / f".other.{pid}.xyz.tmp"
    stale_file.write_bytes(b"half a file")
    live = hub.store / f".busy.{os.getpid()}.q.tmp"  # this process's own write in progress: left alone
    live.mkdir()
    assert _published(hub) == []
    hub.pull(str(hf_directory[0]), name="whole")
    assert [e.name for e in _published(hub)] == ["whole"]
    assert not leftover.exists() and not stale_file.exists() and live.exists()


def test_a_model_pulled_with_impl_hf_is_an_hf_entry_kept_in_its_own_format(hf_models, tmp_path):
    """--impl hf (or an architecture zoo does not implement): the transformers directory is kept as it is."""
    from zoo.hub.store import starting_point

    source = hf_models["qwen2"]
    entry = Hub().pull(str(source), name="tiny-qwen2", impl="hf")
    assert entry.config == {"arch": "hf", "model_type": "qwen2"}
    assert {"hf/config.json", "hf/model.safetensors", "tokenizer/chat_template.jinja"} <= set(entry.manifest["files"])
    assert (entry.path / "hf" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    config, tokenizer = starting_point("hub:tiny-qwen2")
    assert config == {"arch": "hf", "path": str(entry.path / "hf")} and tokenizer == entry.tokenizer_dir
    ids = torch.randint(3, 90, (2, 9))
    peer = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        expected = peer(ids).logits
        torch.testing.assert_close(entry.build_model().eval()(ids), expected)
        exported = AutoModelForCausalLM.from_pretrained(Hub().export_hf("tiny-qwen2", tmp_path / "out")).eval()
        torch.testing.assert_close(exported(ids).logits, expected)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template

    weights = entry.path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(HubError, match=r"hf/model.safetensors fails its sha256 check"):
        Hub().entry("tiny-qwen2")


def test_a_llama_family_model_is_pulled_into_zoos_own_implementation(hf_models, tmp_path):
    from zoo.hub.store import starting_point

    source = hf_models["qwen2"]
    entry = Hub().pull(str(source), name="native-qwen2")
    assert entry.config["arch"] == "llama" and entry.config["attention_bias"] and entry.config["tie_word_embeddings"]
    assert "tokenizer/chat_template.jinja" in entry.manifest["files"]
    assert starting_point(str(source))[0] == entry.config  # model.init_from=DIR builds the same native model
    assert starting_point(str(source), impl="hf")[0] == {"arch": "hf", "path": str(source)}
    ids = torch.randint(3, 90, (2, 9))
    peer = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        expected = peer(ids).logits
        torch.testing.assert_close(entry.build_model().eval()(ids), expected, atol=1e-5, rtol=0)
        exported = AutoModelForCausalLM.from_pretrained(Hub().export_hf("native-qwen2", tmp_path / "out")).eval()
        torch.testing.assert_close(exported(ids).logits, expected, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template


@pytest.mark.parametrize(
    "impl, says",
    [("hf", "weights do not match its config: missing model.layers.1.mlp.up_proj"),
     ("auto", "layer 1: mlp.gate_proj, mlp.up_proj weights are incomplete")],
)  # fmt: skip
def test_an_hf_directory_with_a_weight_missing_is_refused(hf_models, tmp_path, impl, says):
    from safetensors.torch import load_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in hf_models["llama"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    state = load_file(broken / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, broken / "model.safetensors", {"format": "pt"})
    with pytest.raises(HubError, match=f"broken: {says}"):
        Hub().pull(str(broken), impl=impl)
    assert not _published(Hub())


def test_a_file_that_is_not_gguf_is_refused_in_one_line(tmp_path):
    pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (the gguf extra)")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(ConfigError, match=r"model.gguf: transformers cannot read this GGUF file"):
        Hub().pull(str(fake))
    with pytest.raises(HubError, match=r"nothing.gguf: no such GGUF file"):
        Hub().pull(str(tmp_path / "nothing.gguf"))
    assert not _published(Hub())
