"""BARD on the command line: budget SFT → hub → GRPO under budgets with the reward's parts logged → ``zoo budget``
writes its table and plot; a run without budgets says so in one line."""

import json

TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "trainer.enable_progress_bar=false"]  # fmt: skip


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def test_budget_sft_then_budget_grpo_then_the_per_budget_report(run_zoo, tmp_path):
    run_zoo("fit", "method=bard_sft", *TINY, "data.train_size=100", "data.val_size=4", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "module.evaluation.max_new_tokens=8")  # fmt: skip
    sft = _run_dir(tmp_path / "runs" / "bard_sft")
    logged = json.loads((sft / "metrics.json").read_text())  # per-budget metrics after every validation
    assert {f"budget/{b}/accuracy" for b in (20, 32, 48, 64, 96)} <= set(logged)
    assert all(0 <= logged[f"budget/{b}/within_budget"] <= 1 for b in (20, 96))
    run_zoo("hub", "push", str(sft), "--name", "bard-sft")
    run_zoo("fit", "method=bard_grpo", "model.init_from=hub:bard-sft", "data.train_size=100", "data.val_size=2",
            "data.batch_size=2", "module.rollout.n=2", "module.rollout.max_new_tokens=24",
            "module.evaluation.max_new_tokens=8", "trainer.max_steps=2", "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false")  # fmt: skip
    metrics = json.loads((_run_dir(tmp_path / "runs" / "bard_grpo") / "metrics.json").read_text())
    for part in ("reward/correct", "reward/fidelity", "reward/thinking_length"):
        assert part in metrics, part
    assert metrics["reward/thinking_length"] > 0  # re-tokenized text: an untrained policy's stray bytes count more
    out = tmp_path / "report"
    report = run_zoo("budget", str(sft), "--problems", "3", "--max-new-tokens", "12", "--out", str(out))
    assert "| 20 |" in report.stdout and "| 96 |" in report.stdout
    levels = json.loads((out / "budgets.json").read_text())["levels"]
    assert [row["budget"] for row in levels] == [20, 32, 48, 64, 96]
    assert all(row["length"] <= 12 and row["truncated_accuracy"] is not None for row in levels)
    assert (out / "budgets.png").stat().st_size > 0


def test_a_run_without_budgets_says_so(run_zoo, tmp_path, trained_run):
    process = run_zoo("budget", str(trained_run), check=False)
    assert process.returncode != 0
    assert "trained without data.budgets" in process.stderr.strip().splitlines()[-1]


def test_a_hugging_face_policy_with_a_chat_template_trains_and_reports_under_budgets(run_zoo, tmp_path, hf_models):
    run_zoo("fit", "method=bard_sft", f"model.init_from={hf_models['qwen2']}", "model.impl=hf", "data.train_size=60",
            "data.val_size=2",
            "data.seq_len=256", "data.budgets.levels=[20,32]", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "module.evaluation.max_new_tokens=6", "trainer.enable_progress_bar=false")  # fmt: skip
    sft = _run_dir(tmp_path / "runs" / "bard_sft")
    assert "budget/32/accuracy" in json.loads((sft / "metrics.json").read_text())
    run_zoo("hub", "push", str(sft), "--name", "qwen-bard")
    run_zoo("fit", "method=bard_grpo", "model.init_from=hub:qwen-bard", "data.train_size=60", "data.val_size=2",
            "data.batch_size=2", "module.rollout.n=2", "module.rollout.max_new_tokens=12",
            "data.budgets.levels=[20,32]", "trainer.max_steps=1", "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false")  # fmt: skip
    metrics = json.loads((_run_dir(tmp_path / "runs" / "bard_grpo") / "metrics.json").read_text())
    assert (
        "reward/fidelity" in metrics
        and "rollout: hf engine" in (_run_dir(tmp_path / "runs" / "bard_grpo") / "cli.log").read_text()
    )
    report = run_zoo("budget", "hub:qwen-bard", "--problems", "2", "--max-new-tokens", "6", "--no-truncation")
    assert "| 20 |" in report.stdout and "| 32 |" in report.stdout
