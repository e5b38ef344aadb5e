"""logger=wandb and logger=mlflow (zoo/training/loggers.py, configs/logger/), offline: an RL run logs the scalar
metrics, the rollout-length histogram and the sample text to each, as it does to TensorBoard."""

import json
from pathlib import Path

import pytest

TINY_GRPO = ["method=grpo", "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2",
             "data.train_size=32", "data.val_size=4", "data.batch_size=2", "module.rollout.n=2",
             "module.rollout.max_new_tokens=4", "module.evaluation.max_new_tokens=4"]  # fmt: skip


def _run_dir(tmp_path, name):
    (run,) = (tmp_path / "runs" / name).iterdir()
    return run


def test_weights_and_biases_offline_gets_metrics_histograms_and_samples(run_zoo, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the loggers extra is not installed (pip install 'zoo[loggers]')")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_zoo("fit", *TINY_GRPO, "logger=wandb", "name=wb")
    try:
        summary = wandb.run.summary._as_dict()  # the run stays open until the process ends
        assert wandb.run.settings.mode in ("offline", "dryrun")  # W&B's two names for it
        assert {"reward/mean", "train/loss", "val/pass@1", "batch/rows_per_step"} <= summary.keys()
        assert summary["trainer/global_step"] >= 1
        assert summary["rollout/lengths"]["_type"] == "histogram" and sum(summary["rollout/lengths"]["values"]) == 4
        assert summary["rollout/samples"]["_type"] == "table-file"
    finally:
        wandb.finish()
    assert list((_run_dir(tmp_path, "wb") / "wandb").glob("offline-run-*/run-*.wandb"))


def test_mlflow_file_store_gets_metrics_histograms_and_samples(run_zoo, tmp_path):
    pytest.importorskip("mlflow", reason="the loggers extra is not installed (pip install 'zoo[loggers]')")
    from mlflow.tracking import MlflowClient

    run_zoo("fit", *TINY_GRPO, "logger=mlflow", "name=ml")
    client = MlflowClient(tracking_uri=(_run_dir(tmp_path, "ml") / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "zoo"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "reward/mean")) == 2
    assert {"train/loss", "val/pass_at_1", "batch/rows_per_step"} <= run.data.metrics.keys()  # MLflow refuses '@'
    path = client.download_artifacts(run.info.run_id, "histograms/rollout/lengths/step_0.json", str(tmp_path))
    histogram = json.loads(Path(path).read_text())
    assert sum(histogram["counts"]) == 4 and len(histogram["edges"]) == len(histogram["counts"]) + 1
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "text/rollout/samples")]
    assert samples == ["text/rollout/samples/step_0.md"]
