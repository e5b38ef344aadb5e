"""The ``zoo`` command as a user runs it: fit, errors for wrong input, listing, multirun, TensorBoard files."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _run_dirs(root):
    return sorted(p.parent for p in root.rglob(".hydra"))


def test_fit_writes_checkpoints_tokenizer_metrics_and_tensorboard_events(trained_run):
    run_dir = trained_run
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "best.ckpt"}
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and metrics["val/loss"] > 0

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/ppl"} <= scalars
    val = [e.value for e in events.Scalars("val/loss")]
    assert [e.step for e in events.Scalars("val/loss")] == [9, 19] and val[-1] < val[0]
    assert events.Scalars("val/loss")[-1].value == metrics["val/loss"]


def test_unknown_group_option_names_the_options(run_zoo):
    process = run_zoo("fit", "model=pythia-7t", check=False)
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert "unknown model 'pythia-7t'" in line and "pythia-160m" in line and "Traceback" not in process.stderr


def test_unknown_key_is_named(run_zoo):
    process = run_zoo("fit", "trainer.max_stepz=5", check=False)
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert "unknown key 'trainer.max_stepz'" in line


def test_unknown_key_inside_a_sweep_is_found_before_anything_runs(run_zoo, tmp_path):
    process = run_zoo("fit", "-m", "model=pythia,nope", check=False)
    assert process.returncode == 2 and "unknown model 'nope'" in process.stderr
    assert not (tmp_path / "runs").exists()


def test_a_setting_the_module_does_not_take_is_named(run_zoo, tiny):
    process = run_zoo("fit", *tiny, "+data.colour=red", check=False)
    assert process.returncode == 2
    assert "data" in process.stderr and "colour" in process.stderr and "Traceback" not in process.stderr


def test_missing_data_file_is_one_line(run_zoo, tiny):
    process = run_zoo("fit", *tiny, "data.path=missing.txt", check=False)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith("zoo: error: data.path not found")


def test_help_and_ls_show_groups_and_options(run_zoo):
    listing = run_zoo("ls").stdout
    for word in ("model", "pythia-160m", "strategy", "fsdp2", "logger", "tensorboard", "debug", "limit"):
        assert word in listing
    flat = " ".join(listing.split())
    assert "pip install 'zoo[vllm]'" in flat  # rich markup did not eat the brackets
    assert "for the MeSH arm of the knowledge-infusion sweep (experiment=infusion_sweep_mesh)." in flat  # whole
    help_text = run_zoo("--help").stdout
    assert "zoo fit" in help_text and "fsdp2" in help_text
    assert "for the MeSH arm" not in help_text  # --help lists the options; zoo ls describes them
    hydra_help = run_zoo("fit", "--help").stdout
    assert hydra_help.startswith("zoo fit|validate|test") and "== Configuration groups ==" in hydra_help


def test_overrides_reach_the_model_and_data(run_zoo, tiny, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the cat sat on the mat" for i in range(3000)))
    run_zoo("fit", *tiny, "debug=limit", f"data.path={corpus}", "model.num_hidden_layers=3", "name=custom")
    (run_dir,) = _run_dirs(tmp_path / "runs" / "custom")
    import torch

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["num_hidden_layers"] == 3
    assert checkpoint["datamodule_hyper_parameters"]["path"] == str(corpus)


def test_multirun_sweeps_every_value(run_zoo, tiny, tmp_path):
    run_zoo("fit", "-m", *tiny, "debug=limit", "trainer.max_steps=4", "module.optim.lr=1e-3,1e-2")
    runs = _run_dirs(tmp_path / "runs" / "multirun")
    assert len(runs) == 2
    learning_rates = sorted(json.loads((r / "metrics.json").read_text())["train/lr"] for r in runs)
    assert learning_rates[1] > 5 * learning_rates[0]


def test_validate_and_test_a_checkpoint(run_zoo, tiny, trained_run, tmp_path):
    trained = json.loads((trained_run / "metrics.json").read_text())
    for command, stage in (("validate", "val"), ("test", "test")):
        process = run_zoo(
            command,
            *tiny,
            f"ckpt_path={trained_run}",
            f"name={command}",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
        )
        assert "LeafSpec" not in process.stderr  # Lightning's deprecation noise is not shown
        if command == "test":
            assert "no test split of its own" in process.stdout + process.stderr  # and it says so
        (run_dir,) = _run_dirs(tmp_path / "runs" / command)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        # last.ckpt holds the weights of the run's final validation; the test split is the val split
        assert abs(metrics[f"{stage}/loss"] - trained["val/loss"]) < 1e-5
