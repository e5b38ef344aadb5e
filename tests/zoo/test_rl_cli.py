"""zoo's chain on the command line: SFT → hub → GRPO from the hub entry → hub, and validation of the policy."""

import json

import torch

from zoo.hub import Hub

SMALL = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def test_sft_then_grpo_through_the_hub(run_zoo, tmp_path):
    run_zoo(
        "fit",
        "model=sft",
        *SMALL,
        "data.vocab_size=64",
        "data.train_size=500",
        "data.val_size=16",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "module.evaluation.max_new_tokens=6",
    )
    sft = _run_dir(tmp_path / "runs" / "sft")
    metrics = json.loads((sft / "metrics.json").read_text())
    assert "val/pass@1" in metrics and metrics["global_step"] == 20
    run_zoo("hub", "push", str(sft), "--name", "tiny-sft")

    run_zoo(
        "fit",
        "model=grpo",
        "model.init_from=hub:tiny-sft",
        "data.train_size=500",
        "data.val_size=16",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "module.rollout.n=4",
        "module.rollout.max_new_tokens=6",
        "module.evaluation.max_new_tokens=6",
        "trainer.enable_progress_bar=false",
    )
    grpo = _run_dir(tmp_path / "runs" / "grpo")
    metrics = json.loads((grpo / "metrics.json").read_text())
    for key in ("reward/mean", "rollout/tokens_per_s", "rollout/length_mean", "policy/clip_fraction", "val/pass@1"):
        assert key in metrics, key
    checkpoint = torch.load(grpo / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["hidden_size"] == 32  # the SFT entry's architecture
    run_zoo("hub", "push", str(grpo), "--name", "tiny-grpo")
    assert Hub().entry("tiny-grpo").config["arch"] == "gpt_neox"

    validated = run_zoo(
        "validate",
        "model=grpo",
        f"ckpt_path={grpo}",
        "data.val_size=16",
        "module.evaluation.max_new_tokens=6",
        "name=check",
    )
    assert "val/pass@1" in json.loads((_run_dir(tmp_path / "runs" / "check") / "metrics.json").read_text())
    assert validated.returncode == 0
