"""QAgent on the command line (method=qagent): a warm start by SFT, stage 1 then stage 2 through the hub, `zoo
validate` with the agent's and the baselines' metrics, a model as the frozen reader, and settings checked."""

import json

from zoo.hub.store import Hub

SMALL = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.chat_template=none",
]
RL = [*SMALL, "data.train_size=40", "data.val_size=4", "data.batch_size=2", "module.rollout.max_new_tokens=24",
      "module.evaluation.max_new_tokens=24", "rollout.agent.max_turns=3", "rollout.agent.max_context=384"]  # fmt: skip
AGENT_METRICS = ("val/em", "val/f1", "val/hit", "val/reader_em", "val/reader_f1", "val/naive_rag_hit",
                 "val/naive_rag_reader_em", "val/vanilla_reader_em", "val/searches", "reward/hit",
                 "reward/format")  # fmt: skip


def _metrics(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent, json.loads((hydra.parent / "metrics.json").read_text())


def test_sft_then_stage1_then_stage2_through_the_hub(run_zoo, tmp_path):
    run_zoo("fit", "experiment=qagent_sft", *SMALL, "data.train_size=64", "data.val_size=4", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "name=sft")  # fmt: skip
    sft, _ = _metrics(tmp_path / "runs" / "sft")
    run_zoo("hub", "push", str(sft), "--name", "qagent-sft")
    run_zoo("fit", "experiment=qagent_stage1", *RL, "trainer.max_steps=2", "trainer.val_check_interval=2",
            "name=stage1")  # fmt: skip
    stage1, metrics = _metrics(tmp_path / "runs" / "stage1")
    for key in AGENT_METRICS:
        assert key in metrics, key
    assert "reward/reader_em" not in metrics and metrics["global_step"] == 2
    run_zoo("hub", "push", str(stage1), "--name", "qagent-stage1")
    run_zoo(
        "fit",
        "experiment=qagent_stage2",
        *RL,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"module.reader={sft}",
        "name=stage2",
    )  # a language model as the frozen reader
    stage2, metrics = _metrics(tmp_path / "runs" / "stage2")
    assert "reward/reader_em" in metrics and 0 <= metrics["reward/mean"] <= 1.5
    assert Hub().entry("qagent-stage1").config["arch"] == "gpt_neox"
    run_zoo("validate", "method=qagent", f"ckpt_path={stage2}", *RL[6:], "data.chat_template=none", "name=check")
    _, validated = _metrics(tmp_path / "runs" / "check")
    for key in AGENT_METRICS[:8]:
        assert key in validated, key


def test_bad_settings_fail_in_one_line(run_zoo):
    process = run_zoo("fit", "method=qagent", *RL, "module.reward_stage=3", check=False)
    assert process.returncode == 2 and process.stderr.strip() == "zoo: error: module.reward_stage must be 1 or 2, got 3"
    for setting in ("module.reader_max_new_tokens=0", "module.naive_top_k=-1"):
        process = run_zoo("fit", "method=qagent", *RL, setting, check=False)
        assert process.returncode == 2 and setting.split("=")[0] in process.stderr.strip().splitlines()[-1]
    process = run_zoo("fit", "method=qagent", *RL, "module.reader=/nowhere", check=False)
    assert process.returncode == 2 and process.stderr.strip().startswith("zoo: error: module.reader=/nowhere: ")
    process = run_zoo("fit", "method=qagent", *RL, "rollout.agent.environment_options.top_k=0", check=False)
    assert process.returncode == 2 and "top_k" in process.stderr
    process = run_zoo("fit", "method=qagent", *RL, "rollout.agent.environment_options.corpus=/nowhere.jsonl",
                      check=False)  # fmt: skip
    assert process.returncode == 2 and "corpus not found: /nowhere.jsonl" in process.stderr


def test_a_llama_family_policy_runs_the_agent_loop_on_the_native_engine(run_zoo, tmp_path, tiny_hf_model):
    """The README's QAgent-with-your-model command, with a tiny Qwen2 directory (long enough for the transcripts):
    zoo's own Llama-family model, sampled turn by turn by the native engine."""
    policy = tiny_hf_model("qwen2", chat=True, max_position_embeddings=1024)
    run_zoo("fit", "method=qagent", f"model.init_from={policy}", *RL[4:], "rollout.agent.max_context=640",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "name=llama_agent")  # fmt: skip
    run, metrics = _metrics(tmp_path / "runs" / "llama_agent")
    assert metrics["global_step"] == 2 and metrics["agent/turns_mean"] > 1 and metrics["val/searches"] > 0
    assert "rollout: native engine" in (run / "cli.log").read_text()
