"""A diverged run stops with one line naming the step, exits non-zero, and no checkpoint ever holds non-finite
weights. (A divergence injected mid-run is in tests/modules/test_pretrain.py; RL's skipped steps in
tests/modules/test_grpo.py.)"""

import pytest
import torch

from zoo.errors import TrainingDiverged
from zoo.io.checkpoint_io import AtomicCheckpointIO
from zoo.training.optim import ensure_finite


def _finite(checkpoint_path) -> bool:
    state = torch.load(checkpoint_path, weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_the_readme_reproduction_exits_non_zero_with_finite_checkpoints(run_zoo, tiny, tmp_path):
    process = run_zoo(
        "fit",
        *tiny,
        "name=diverge",
        "module.optim.lr=1e6",
        "module.optim.warmup_steps=0",
        "module.optim.grad_clip=null",
        "trainer.max_steps=20",
        "checkpoint.every_n_train_steps=4",
        check=False,
    )
    assert process.returncode != 0
    (line,) = [x for x in process.stderr.splitlines() if x.startswith("zoo: error:")]
    assert "training diverged at step" in line and process.stderr.strip().endswith(line)
    for checkpoint in (tmp_path / "runs" / "diverge").rglob("*.ckpt"):
        assert _finite(checkpoint), checkpoint


def test_the_checkpoint_writer_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    with pytest.raises(TrainingDiverged, match="weight w is not finite"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf"), 0.0])}, "global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), torch.tensor(float("nan"))])
def test_ensure_finite_names_the_value_and_the_step(value):
    ensure_finite(3, loss=1.0, grad_norm=torch.tensor(2.0))
    with pytest.raises(TrainingDiverged, match="at step 7: grad_norm is"):
        ensure_finite(7, loss=1.0, grad_norm=value)
