"""The reference checkpoints that ship in checkpoints/: listed without a download, verified, usable at once, and
each card's command rebuilds its model."""

import json
import shlex

import pytest
import yaml

from zoo.hub.store import Hub, builtin_registry

SHIPPED = ("arithmetic-sft", "mesh-tiny", "pythia-tiny")


def _card(name: str) -> dict:
    text = (builtin_registry() / name / "card.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def test_a_fresh_store_lists_the_shipped_entries_and_each_verifies(run_zoo):
    listed = run_zoo("hub", "list").stdout
    for name in SHIPPED:
        assert name in listed
        entry = Hub().entry(name)  # verifies every sha256
        assert entry.read_only and (entry.path / "model.safetensors").stat().st_size < 8_000_000
        card = _card(name)
        assert card["command"].startswith("zoo fit ") and card["global_step"] > 0 and "val/loss" in card["metrics"]


def test_the_rl_demo_starts_from_the_shipped_sft_policy(run_zoo):
    run = run_zoo(
        "fit",
        "experiment=arithmetic_grpo",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.val_size=16",
        "trainer.enable_progress_bar=false",
        "name=demo",
    )
    assert run.returncode == 0


@pytest.mark.slow
def test_the_card_command_rebuilds_the_arithmetic_policy(run_zoo, tmp_path):
    card = _card("arithmetic-sft")
    args = shlex.split(card["command"])[2:]
    run_zoo("fit", *args, "trainer.enable_progress_bar=false", "name=rebuilt", timeout=900)
    (metrics,) = list((tmp_path / "runs" / "rebuilt").rglob("metrics.json"))
    rebuilt = json.loads(metrics.read_text())
    assert rebuilt["global_step"] == card["global_step"]
    assert rebuilt["val/loss"] == pytest.approx(card["metrics"]["val/loss"], rel=0.15)
    assert rebuilt["val/pass@1"] == pytest.approx(card["metrics"]["val/pass@1"], abs=0.15)
