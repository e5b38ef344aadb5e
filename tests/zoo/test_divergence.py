"""A diverged run stops with one line naming the step, exits non-zero, and no checkpoint ever holds non-finite
weights; RL steps with non-finite advantages are skipped up to a limit."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from zoo.checkpoint_io import AtomicCheckpointIO
from zoo.datamodules.text import TextDataModule
from zoo.modules.pretrain import PretrainModule
from zoo.optim import TrainingDiverged, ensure_finite

MODEL = dict(
    arch="gpt_neox",
    vocab_size=320,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


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


class _PoisonGradients(L.Callback):
    """Makes one gradient NaN at optimizer step ``at``, as an exploding step would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == self.at:
            next(module.parameters()).grad.fill_(float("nan"))


def test_the_last_finite_checkpoint_survives_a_divergence(tmp_path):
    rows = [{"text": f"the number {i} is followed by the number {i + 1}. " * 3} for i in range(200)]
    (tmp_path / "counting.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = TextDataModule(path=str(tmp_path / "counting.jsonl"), vocab_size=300, seq_len=32, batch_size=8)
    module = PretrainModule(MODEL, optim=dict(lr=1e-3, warmup_steps=1))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=2)
    trainer = L.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[checkpoints, _PoisonGradients(at=5)],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    with pytest.raises(TrainingDiverged, match="diverged at step 5: grad_norm is nan"):
        trainer.fit(module, datamodule=data)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and _finite(tmp_path / "ckpt" / "last.ckpt")
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())  # the poisoned step was not applied


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
