"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends; saves are atomic."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from zoo.checkpoint_io import AtomicCheckpointIO
from zoo.errors import ConfigError

RUN = ["trainer.max_steps=150", "checkpoint.every_n_train_steps=10", "trainer.val_check_interval=50"]


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def test_killed_and_resumed_run_matches_an_uninterrupted_run(run_zoo, tiny, zoo_env, tmp_path):
    run_zoo("fit", *tiny, *RUN, "name=full")
    full = _run_dir(tmp_path / "runs" / "full")

    process = subprocess.Popen(
        [sys.executable, "-m", "zoo", "fit", *tiny, *RUN, "name=killed"],
        cwd=tmp_path,
        env=zoo_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not list((tmp_path / "runs").glob("killed/*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = _run_dir(tmp_path / "runs" / "killed")
    assert not (killed / "metrics.json").exists()
    step_at_kill = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step_at_kill < 150

    run_zoo("fit", f"resume={killed}")
    expected = json.loads((full / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["global_step"] == expected["global_step"] == 150
    assert resumed["train/loss"] == pytest.approx(expected["train/loss"], abs=1e-6)
    assert resumed["val/loss"] == pytest.approx(expected["val/loss"], abs=1e-6)
    final = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    again = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in final.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=1e-6)


def test_resume_of_a_directory_that_is_not_a_run_is_one_line(run_zoo, tmp_path):
    process = run_zoo("fit", f"resume={tmp_path}", check=False)
    assert process.returncode == 2 and "not a zoo run directory" in process.stderr


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # as a kill would, in the middle of writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_corrupted_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match="last.ckpt: not a readable checkpoint"):
        AtomicCheckpointIO().load_checkpoint(path)
