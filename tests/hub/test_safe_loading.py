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


COMMANDS = [
    ["validate", "ckpt_path={ckpt}"],
    ["test", "ckpt_path={run}"],
    ["fit", "resume={run}"],
    ["hub", "push", "{ckpt}", "--name", "evil"],
    ["probe", "{run}"],
]


def _check(code, err, marker):
    assert not marker.exists()  # the payload did not run
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])
    assert "last.ckpt: not a readable checkpoint" in errors[0] and "not run" in errors[0]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_pickle_payload_in_a_checkpoint_never_runs(poisoned, command, tmp_path, monkeypatch, capsys):
    """Every loading path, in this process (``zoo.cli.main``); the next test runs one as a real process."""
    from zoo.cli import main

    run, marker = poisoned
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch < 2.6 behaviour: unpickle anything
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([a.format(run=run, ckpt=run / "checkpoints" / "last.ckpt") for a in command])
    _check(exit_.value.code, capsys.readouterr().err, marker)


def test_as_a_process_the_payload_never_runs(run_zoo, zoo_env, poisoned):
    run, marker = poisoned
    zoo_env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # the environment run_zoo passes
    process = run_zoo("validate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", check=False)
    _check(process.returncode, process.stderr, marker)
