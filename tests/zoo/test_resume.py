"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends; saves are atomic.

A SIGKILL needs a process of its own (about 7 s of imports and setup), so pretraining with AdamW and the
synchronous RL loop are killed so; the 8-bit optimizer and the other RL schedules die in this process right after
their first ``last.ckpt`` is written, which leaves on disk what a SIGKILL at that moment leaves."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.errors import ConfigError
from zoo.io.checkpoint_io import AtomicCheckpointIO

RUN = [
    "trainer.max_steps=60",
    "checkpoint.every_n_train_steps=10",
    "trainer.val_check_interval=20",
    "trainer.limit_val_batches=4",
]


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def _kill_after_first_checkpoint(args, name, tmp_path, zoo_env, max_steps):
    """Start ``zoo fit ARGS name=NAME``, SIGKILL it once it has saved a checkpoint; its run directory."""
    process = subprocess.Popen(
        [sys.executable, "-m", "zoo", "fit", *args, f"name={name}"],
        cwd=tmp_path,
        env=zoo_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not list((tmp_path / "runs").glob(f"{name}/*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = _run_dir(tmp_path / "runs" / name)
    assert not (killed / "metrics.json").exists()
    step_at_kill = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step_at_kill < max_steps
    return killed


class _Killed(BaseException):
    """Raised in place of a SIGKILL: not an ``Exception``, so nothing on the way up handles it as an error."""


def _die_after_first_checkpoint(args, name, tmp_path, max_steps):
    """``zoo fit ARGS name=NAME`` in this process, stopped by :class:`_Killed` once it has written its first
    ``last.ckpt``; its run directory."""
    save = AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if Path(path).name == "last.ckpt":
            raise _Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AtomicCheckpointIO, "save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            main(["fit", *args, f"name={name}"])
    killed = _run_dir(tmp_path / "runs" / name)
    assert not (killed / "metrics.json").exists()
    step_at_kill = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step_at_kill < max_steps
    return killed


def _assert_same_end(full, resumed, keys):
    expected = json.loads((full / "metrics.json").read_text())
    got = json.loads((resumed / "metrics.json").read_text())
    assert got["global_step"] == expected["global_step"]
    for key in keys:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    final = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    again = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in final.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_killed_and_resumed_run_matches_an_uninterrupted_run(optimizer, tiny, zoo_env, tmp_path, monkeypatch):
    if optimizer != "adamw":
        pytest.importorskip("bitsandbytes")
    monkeypatch.chdir(tmp_path)  # the uninterrupted run and the resume run in this process; the killed one not
    args = [*tiny, *RUN, f"module.optim.name={optimizer}"]
    main(["fit", *args, "name=full"])
    if optimizer == "adamw":
        killed = _kill_after_first_checkpoint(args, "killed", tmp_path, zoo_env, 60)
    else:  # the 8-bit state's round trip: the disk state a kill leaves, without a process of its own
        killed = _die_after_first_checkpoint(args, "killed", tmp_path, 60)
    main(["fit", f"resume={killed}"])
    full = _run_dir(tmp_path / "runs" / "full")
    _assert_same_end(full, killed, ["train/loss", "val/loss", "train/tokens"])
    state = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    packed = [v.get("__bnb_optimizer_quant_state__", v) for v in state.values()]  # bitsandbytes nests its state
    moments = {v["state1"].dtype if "state1" in v else v["exp_avg"].dtype for v in packed}
    assert torch.uint8 in moments if optimizer == "adamw8bit" else moments == {torch.float32}


SMALL = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "data.vocab_size=64",
    "module.evaluation.max_new_tokens=6",
    "trainer.enable_progress_bar=false",
]
GRPO = [
    "method=grpo",
    "model.init_from=hub:resume-sft",
    "data.train_size=300",
    "data.val_size=8",
    "data.batch_size=4",
    "module.rollout.n=4",
    "module.rollout.max_new_tokens=6",
    "module.evaluation.max_new_tokens=6",
    "trainer.enable_progress_bar=false",
    "module.algorithm.ppo_epochs=2",
    "module.algorithm.minibatch_size=8",  # two minibatches per epoch: four optimizer steps per rollout
    "trainer.max_steps=40",
    "trainer.val_check_interval=5",
    "checkpoint.every_n_train_steps=8",
]


SCHEDULES = {
    "synchronous": ([], []),
    "tail_batching": (["sampler=tail_batching"], ["sampler/queue_size", "sampler/long_rounds"]),
    "queue_scheduling": (
        ["rollout.schedule=queue", "rollout.extra_prompts=4", "rollout.filter_groups=true"],
        ["queue/returned_prompts", "queue/filtered_groups"],
    ),
    "asynchronous_alpha_0": (["rollout.async_ratio=0"], ["async/staleness_max", "async/version"]),
    # the checkpoints hold the adapters only (the base is rebuilt from the hub entry); the reference is the base
    "lora_adapters_synced": (
        ["model.lora.r=4", "module.algorithm.kl_coef=0.05", "rollout.lora_sync=adapters"],
        ["policy/kl_to_reference"],
    ),
    "qlora_4bit": (["model.lora.r=4", "model.lora.quantize=4bit", "module.algorithm.kl_coef=0.05"], []),
    # the quantized reference is left out of the checkpoints and rebuilt from the starting weights; the engine's
    # quantized replica is rebuilt from the policy at the first sync
    "reference_and_rollout_8bit": (
        ["module.algorithm.kl_coef=0.05", "module.algorithm.reference_quantization=8bit", "rollout.quantization=8bit"],
        ["policy/kl_to_reference"],
    ),
}


@pytest.fixture(scope="module")
def sft_policy(zoo_cache, tmp_path_factory) -> Path:
    """A directory whose hub store holds ``resume-sft``, a small SFT policy that earns rewards (trained once)."""
    where = tmp_path_factory.mktemp("resume_sft")
    sft = ["data.train_size=2000", "data.batch_size=32", "data.seq_len=64", "trainer.max_steps=150"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(where)
        patch.setenv("ZOO_CACHE", str(zoo_cache))
        patch.setenv("ZOO_HUB", str(where / "hub"))
        main(["fit", "method=sft", *SMALL, *sft, "trainer.val_check_interval=150", "name=sft"])
        main(["hub", "push", str(_run_dir(where / "runs" / "sft")), "--name", "resume-sft"])
    return where


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_a_killed_grpo_run_resumes_exactly(sft_policy, zoo_env, tmp_path, monkeypatch, schedule):
    """Rollouts (seeded by the step), the prompt order, minibatch shuffles, the optimizer and the sampler's
    queue and position (or queue scheduling's returned prompts) all continue."""
    sampler, logged = SCHEDULES[schedule]
    shutil.copytree(sft_policy / "hub", tmp_path / "hub")  # this test's hub store
    monkeypatch.chdir(tmp_path)  # the uninterrupted run and the resume run in this process; the killed one not
    main(["fit", *GRPO, *sampler, "name=full"])
    full = _run_dir(tmp_path / "runs" / "full")
    start = torch.load(_run_dir(sft_policy / "runs" / "sft") / "checkpoints" / "last.ckpt", weights_only=True)
    end = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    if "model.embed.weight" in end:
        moved = max((end[k] - v).abs().max() for k, v in start["state_dict"].items() if k in end)
    else:  # adapters only: B starts at zero
        moved = max(t.abs().max() for k, t in end.items() if ".lora_B." in k)
    # GRPO changed the policy by ten times the tolerance the ends are compared at (1e-6), so a resume that drew
    # other rollouts would end elsewhere
    assert moved > 1e-5
    if schedule == "synchronous":
        killed = _kill_after_first_checkpoint([*GRPO, *sampler], "killed", tmp_path, zoo_env, 40)
    else:
        killed = _die_after_first_checkpoint([*GRPO, *sampler], "killed", tmp_path, 40)
    main(["fit", f"resume={killed}"])
    _assert_same_end(full, killed, ["train/loss", "reward/mean", "val/pass@1", *logged])


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


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_its_own_settings(run_zoo, trained_run, tmp_path):
    run_dir = tmp_path / "early"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before the first checkpoint
    (run_dir / "metrics.json").unlink()
    process = run_zoo("fit", f"resume={run_dir}")
    assert "has no checkpoint yet" in process.stdout + process.stderr
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == expected["global_step"] == 20  # its own settings (debug=limit: 20 steps)
    assert state["datamodule_hyper_parameters"] == expected["datamodule_hyper_parameters"]


def test_a_time_based_checkpoint_interval_adds_a_timed_last_checkpoint():
    from hydra import compose, initialize_config_module

    from zoo.run import build_trainer

    with initialize_config_module("zoo.configs", version_base="1.3"):
        cfg = compose("fit", overrides=["checkpoint.every_n_minutes=30", "logger=none"])
    trainer = build_trainer(cfg, Path("unused"))
    timed = [c for c in trainer.checkpoint_callbacks if c._train_time_interval is not None]
    assert len(timed) == 1 and timed[0]._train_time_interval.total_seconds() == 1800 and timed[0].filename == "last"


def test_a_killed_asynchronous_run_loses_and_repeats_no_prompt(sft_policy, zoo_env, tmp_path, monkeypatch):
    """α = 2: the prompts in flight at the checkpoint are regenerated after the resume; every prompt handed out is
    trained exactly once or still waits, and the run trains its ten batches."""
    shutil.copytree(sft_policy / "hub", tmp_path / "hub")
    monkeypatch.chdir(tmp_path)
    killed = _die_after_first_checkpoint([*GRPO, "rollout.async_ratio=2"], "killed", tmp_path, 40)
    main(["fit", f"resume={killed}"])
    state = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    (sampler,) = [s["async"] for name, s in state["callbacks"].items() if "RolloutCallback" in name]
    assert state["global_step"] == 40 and sampler["trained_prompts"] == 10 * 4
    assert sampler["prompts"]["handed"] == sampler["trained_prompts"] + len(sampler["buffer"]["returned"])
    assert sampler["buffer"]["version"] == 10
