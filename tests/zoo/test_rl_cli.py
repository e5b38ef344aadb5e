"""zoo's chain on the command line: SFT → hub → GRPO from the hub entry → hub, and validation of the policy."""

import json

import pytest
import torch
import yaml

from zoo.hub.store import Hub

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


def test_pretrain_then_sft_then_grpo_through_the_hub(run_zoo, tmp_path, trained_run):
    """zoo's own chain: a pretrained tiny Pythia → hub → SFT on arithmetic → hub → GRPO → hub."""
    run_zoo("hub", "push", str(trained_run), "--name", "tiny-base")
    run_zoo(
        "fit",
        "method=sft",
        "model.init_from=hub:tiny-base",
        "data.train_size=500",
        "data.val_size=16",
        "data.seq_len=64",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "module.evaluation.max_new_tokens=6",
        "trainer.enable_progress_bar=false",
    )
    sft = _run_dir(tmp_path / "runs" / "sft")
    metrics = json.loads((sft / "metrics.json").read_text())
    assert "val/pass@1" in metrics and metrics["global_step"] == 20
    run_zoo("hub", "push", str(sft), "--name", "tiny-sft")

    run_zoo(
        "fit",
        "method=grpo",
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
    base = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    architecture = {k: v for k, v in checkpoint["hyper_parameters"]["model"].items() if k != "init_from"}
    assert architecture == {k: v for k, v in base["hyper_parameters"]["model"].items() if k != "init_from"}
    tokenizer = (trained_run / "tokenizer" / "tokenizer.json").read_text()
    assert (grpo / "tokenizer" / "tokenizer.json").read_text() == tokenizer  # the base's tokenizer all along
    run_zoo("hub", "push", str(grpo), "--name", "tiny-grpo")
    assert Hub().entry("tiny-grpo").config["arch"] == "gpt_neox"

    validated = run_zoo(
        "validate",
        "method=grpo",
        f"ckpt_path={grpo}",
        "data.val_size=16",
        "module.evaluation.max_new_tokens=6",
        "name=check",
    )
    assert "val/pass@1" in json.loads((_run_dir(tmp_path / "runs" / "check") / "metrics.json").read_text())
    assert validated.returncode == 0


def test_ppo_from_the_command_line(run_zoo, tmp_path):
    """PPO with queue scheduling and redundant prompts (GRPO runs the batch schedule above)."""
    run_zoo(
        "fit",
        "method=ppo",
        *SMALL,
        "data.vocab_size=64",
        "data.train_size=200",
        "data.val_size=8",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "module.rollout.max_new_tokens=4",
        "+data.options={carry_only: true}",
        "rollout.schedule=queue",
        "rollout.extra_prompts=2",
        "rollout.max_running=16",
    )
    run = _run_dir(tmp_path / "runs" / "ppo")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and "critic/value_loss" in metrics and "reward/mean" in metrics
    assert metrics["queue/launched_prompts"] >= 10 and 0 < metrics["queue/occupancy"] <= 1

    # validating the run needs neither method=ppo nor its task options: they are the run's own
    run_zoo("validate", f"ckpt_path={run}", "name=check", "module.evaluation.max_new_tokens=4")
    check = _run_dir(tmp_path / "runs" / "check")
    used = yaml.safe_load((check / ".hydra" / "config.yaml").read_text())
    assert used["module"]["_target_"].endswith("PPOModule") and used["data"]["options"] == {"carry_only": True}
    assert "val/pass@1" in json.loads((check / "metrics.json").read_text())

    # a run saved before methods had a group of their own named its method in the model group: it still validates
    # and resumes
    saved = run / ".hydra" / "overrides.yaml"
    saved.write_text(saved.read_text().replace("method=ppo", "model=ppo"))
    assert "- model=ppo" in saved.read_text()
    run_zoo("validate", f"ckpt_path={run}", "name=old", "module.evaluation.max_new_tokens=4")
    used = yaml.safe_load((_run_dir(tmp_path / "runs" / "old") / ".hydra" / "config.yaml").read_text())
    assert used["module"]["_target_"].endswith("PPOModule")
    run_zoo("fit", f"resume={run}", "trainer.max_steps=4")
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4


def test_a_task_that_needs_a_file_says_so_in_one_line(run_zoo):
    process = run_zoo("fit", "method=grpo", "data=gsm8k", check=False)
    assert process.returncode == 2
    assert process.stderr.strip() == "zoo: error: data.path must be set, e.g. data.path=... (data.path missing)"


def test_gsm8k_prompts_from_the_shared_data(run_zoo, tmp_path, shared_data):
    path = shared_data("gsm8k/test.jsonl")
    run_zoo(
        "fit",
        "method=grpo",
        *SMALL,
        "data=gsm8k",
        f"data.path={path}",
        "data.val_size=8",
        "data.vocab_size=300",
        "data.train_size=64",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "module.rollout.n=2",
        "module.rollout.max_new_tokens=4",
    )
    metrics = json.loads((_run_dir(tmp_path / "runs" / "grpo") / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["reward/failures"] == 0


def test_a_malformed_jsonl_row_names_file_and_line(run_zoo, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    process = run_zoo("fit", "method=grpo", "data=gsm8k", f"data.path={bad}", check=False)
    assert process.returncode == 2 and f"{bad}:2: no field 'answer'" in process.stderr


@pytest.mark.slow
def test_sft_then_grpo_and_ppo_learn_to_carry(run_zoo, tmp_path):
    """docs/rl.md's RL demonstration (about 1.5 minutes): SFT on a sloppy teacher's solutions leaves held-out
    greedy accuracy under 30%; GRPO and PPO with the exact-match reward each take it over 70%."""
    run_zoo("fit", "experiment=arithmetic_sft", "trainer.enable_progress_bar=false")
    sft = json.loads((_run_dir(tmp_path / "runs" / "arithmetic_sft") / "metrics.json").read_text())
    run_zoo("hub", "push", str(_run_dir(tmp_path / "runs" / "arithmetic_sft")), "--name", "arithmetic-sft")
    assert sft["val/pass@1"] < 0.3
    for method in ("grpo", "ppo"):
        run_zoo("fit", f"experiment=arithmetic_{method}", "trainer.enable_progress_bar=false")
        rl = json.loads((_run_dir(tmp_path / "runs" / f"arithmetic_{method}") / "metrics.json").read_text())
        assert rl["global_step"] == 200 and rl["val/pass@1"] > 0.7, (method, sft["val/pass@1"], rl["val/pass@1"])


def _one_step_policy(run_zoo, tmp_path, name, *overrides):
    """The policy after one GRPO step from the shipped SFT policy (the same weights whatever the seed)."""
    run_zoo(
        "fit", "experiment=arithmetic_grpo", f"name={name}", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "data.batch_size=4", "module.rollout.n=4", *overrides, "trainer.enable_progress_bar=false",
    )  # fmt: skip
    (checkpoint,) = list((tmp_path / "runs" / name).rglob("last.ckpt"))
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_the_run_seed_drives_the_rollouts_and_an_explicit_rollout_seed_wins(run_zoo, tmp_path):
    """From the same starting weights and prompts, seed=1 and seed=2 sample different rollouts (so one step moves
    the policy differently); module.rollout.seed, when given, decides alone."""
    one, two = (_one_step_policy(run_zoo, tmp_path, f"seed{s}", f"seed={s}") for s in (1, 2))
    assert any(not torch.equal(one[k], two[k]) for k in one), "seeds 1 and 2 trained on the same rollouts"
    fixed = [_one_step_policy(run_zoo, tmp_path, f"fixed{s}", f"seed={s}", "module.rollout.seed=7") for s in (1, 2)]
    assert all(torch.equal(fixed[0][k], fixed[1][k]) for k in fixed[0])
