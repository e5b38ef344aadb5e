"""Hugging Face models through the CLI, as a user drives them: SFT of a saved model directory, its run pushed
to the hub as an hf entry, GRPO (Llama) and PPO (Qwen2, chat template, tied embeddings) from that entry with the
engine ``rollout=auto`` picks; the mistakes a user makes end in one line."""

import json
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.hub.store import Hub

QUICK = [
    "probes.every_n_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.train_size=400",
    "data.val_size=8",
]


def _zoo(*args: str) -> None:
    """``zoo ARGS`` in this process (a run is seconds, not the 5 s a new Python process costs)."""
    main(list(args))


def _run(tmp_path: Path, name: str) -> Path:
    (run,) = (tmp_path / "runs" / name).iterdir()
    return run


@pytest.mark.parametrize(
    "arch, method, key, impl", [("llama", "grpo", "model.path", "hf"), ("qwen2", "ppo", "model.init_from", "auto")]
)
def test_sft_then_hub_then_rl(hf_models, tmp_path, monkeypatch, arch, method, key, impl):
    """A Hugging Face directory trained through transformers (model.impl=hf) or through zoo's own Llama-family
    implementation (auto: the native engine samples it), SFT then the hub then RL."""
    monkeypatch.chdir(tmp_path)
    _zoo(
        "fit", "method=sft", f"{key}={hf_models[arch]}", f"model.impl={impl}", *QUICK, "data.seq_len=96",
        "data.batch_size=8", "trainer.max_steps=80", "trainer.val_check_interval=80", "module.optim.lr=1e-2",
        "name=sft",
    )  # fmt: skip
    sft = _run(tmp_path, "sft")
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["global_step"] == 80 and metrics["val/loss"] < 2.0  # from ln(258) = 5.6 at random init
    _zoo("hub", "push", str(sft), "--name", f"{arch}-sft")
    entry = Hub().entry(f"{arch}-sft")
    native = impl == "auto"
    assert entry.config["arch"] == "llama" if native else entry.config == {"arch": "hf", "model_type": arch}
    assert entry.card_metadata["global_step"] == 80

    _zoo(
        "fit", f"method={method}", f"model.init_from=hub:{arch}-sft", *QUICK, "data.batch_size=4",
        "module.rollout.n=4", "module.rollout.max_new_tokens=8", "module.evaluation.max_new_tokens=8",
        "module.algorithm.kl_coef=0.05", "trainer.max_steps=3", "trainer.val_check_interval=3", f"name={method}",
    )  # fmt: skip
    rl = _run(tmp_path, method)
    metrics = json.loads((rl / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and "val/pass@1" in metrics and "policy/kl_to_reference" in metrics
    assert f"rollout: {'native' if native else 'hf'} engine" in (rl / "cli.log").read_text()
    assert ("critic/value_loss" in metrics) == (method == "ppo")


def test_validate_rebuilds_an_hf_run_from_its_checkpoint(hf_models, tmp_path, monkeypatch):
    """Trained from a relative model.path, validated from another working directory: the run keeps the
    directory's absolute path."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "llama").symlink_to(hf_models["llama"])
    monkeypatch.chdir(tmp_path / "work")
    _zoo("fit", "model=hf", "model.path=llama", "data=sft", "module=sft", *QUICK,
         "data.seq_len=64", "trainer.max_steps=2", "trainer.val_check_interval=2", "name=fit")  # fmt: skip
    fitted_run = _run(tmp_path / "work", "fit")
    fitted = json.loads((fitted_run / "metrics.json").read_text())
    monkeypatch.chdir(tmp_path)
    _zoo("validate", f"ckpt_path={fitted_run}", "name=check")
    validated = json.loads((_run(tmp_path, "check") / "metrics.json").read_text())
    assert validated["val/loss"] == pytest.approx(fitted["val/loss"], rel=1e-5)


@pytest.mark.parametrize(
    "args, says",
    [
        (["model=hf"], "model.path is required for an hf model"),
        (["model=hf", "model.path=/no/such/dir"], "model.path=/no/such/dir: no such directory, and not in the local"),
        (["method=grpo", "model.init_from=/no/such/dir"], "model.init_from=/no/such/dir: no such directory"),
        (["method=grpo", "model.path=/no/such/dir"], "model.path=/no/such/dir: no such directory"),
        (
            ["method=grpo", "model.init_from={llama}", "model.impl=hf", "rollout=native"],
            "the native engine serves zoo's own models",
        ),
        (
            ["method=sft", "model.init_from={llama}", "model.impl=hf", "data.tokenizer={qwen2}"],
            "the tokenizer has 260 tokens, the model at",
        ),
        (
            ["method=sft", "model.init_from={llama}", "data.tokenizer={qwen2}"],
            "model.vocab_size=258 is smaller than the tokenizer's 260 tokens",
        ),
        (["method=sft", "model.path={opt}", "model.impl=native"], "holds a 'opt' model; zoo implements gpt_neox"),
        (["method=sft", "model.path={llama}", "model.impl=fast"], "model.impl='fast' is not one of auto, native, hf"),
        (["model=hf", "model.path={llama}", "model.dtype=int4"], "model.dtype must be one of"),
        (["method=sft", "model.init_from={unknown}"], "model_type 'no-such-arch' is not a causal LM"),
    ],
)
def test_mistakes_end_in_one_line(hf_models, tmp_path, monkeypatch, capsys, args, says):
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    monkeypatch.chdir(tmp_path)
    paths = {name: str(path) for name, path in hf_models.items()} | {"unknown": str(unknown)}
    with pytest.raises(SystemExit) as exit_:
        _zoo("fit", *[a.format(**paths) for a in args], "probes.every_n_steps=0", "trainer.max_steps=1")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and says in errors[0], err[-2000:]


def test_an_hf_run_resumes_and_the_probes_say_what_they_cannot_do(hf_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["method=grpo", f"model.path={hf_models['llama']}", "model.impl=hf", *QUICK, "data.batch_size=4",
            "module.rollout.n=2"]  # fmt: skip
    _zoo("fit", *args, "trainer.max_steps=2", "checkpoint.every_n_train_steps=1", "name=first")
    first = _run(tmp_path, "first")
    _zoo("fit", f"resume={first}", "trainer.max_steps=4")
    assert json.loads((first / "metrics.json").read_text())["global_step"] == 4
    Hub().pull(str(hf_models["llama"]), name="llama", impl="hf")
    with pytest.raises(SystemExit):
        _zoo("probe", "hub:llama")
    assert "zoo: error: hub:llama: a Hugging Face model; the probes trace the blocks of zoo's models only" in (
        capsys.readouterr().err
    )
