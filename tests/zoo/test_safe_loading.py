"""No path that reads a checkpoint runs a pickle payload, even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (what a torch
older than 2.6 does by default): each refuses the file in one line naming it."""

import shutil

import pytest
import torch


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def poisoned(trained_run, tmp_path):
    """A copy of a real run whose last.ckpt also carries a payload; the marker file it would create."""
    run = tmp_path / "poisoned_run"
    shutil.copytree(trained_run, run)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "payload_ran"
    checkpoint["extra"] = _Payload(str(marker))
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run, marker


@pytest.mark.parametrize(
    "command",
    [
        ["validate", "ckpt_path={ckpt}"],
        ["test", "ckpt_path={run}"],
        ["fit", "resume={run}"],
        ["hub", "push", "{ckpt}", "--name", "evil"],
        ["probe", "{run}"],
    ],
)
def test_a_pickle_payload_in_a_checkpoint_never_runs(run_zoo, zoo_env, poisoned, command):
    run, marker = poisoned
    zoo_env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # the environment run_zoo passes
    args = [a.format(run=run, ckpt=run / "checkpoints" / "last.ckpt") for a in command]
    process = run_zoo(*args, check=False)
    assert not marker.exists()  # the payload did not run
    assert process.returncode == 2, process.stderr[-2000:]
    (line,) = process.stderr.strip().splitlines()[-1:]
    assert line.startswith("zoo: error: ") and "last.ckpt: not a readable checkpoint" in line
