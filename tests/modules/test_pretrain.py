"""The pretraining module in a Lightning Trainer: the loss falls, checkpoints rebuild the model alone."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from zoo.datamodules.text import TextDataModule
from zoo.errors import TrainingDiverged
from zoo.io.checkpoint_io import AtomicCheckpointIO
from zoo.modules.pretrain import PretrainModule

MODEL = dict(
    arch="gpt_neox",
    vocab_size=320,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


@pytest.fixture
def datamodule(tmp_path):
    rows = [{"text": f"the number {i} is followed by the number {i + 1}. " * 3} for i in range(300)]
    (tmp_path / "counting.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return TextDataModule(
        path=str(tmp_path / "counting.jsonl"), vocab_size=300, seq_len=32, batch_size=8, cache=str(tmp_path / "cache")
    )


def _trainer(tmp_path, steps, **kwargs):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_loss_falls_and_metrics_are_logged(tmp_path, datamodule):
    torch.manual_seed(0)
    module = PretrainModule(MODEL, optim=dict(lr=3e-3, warmup_steps=5))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            losses.append(trainer.callback_metrics["train/loss"].item())

    trainer = _trainer(tmp_path, 60, callbacks=[Record()], val_check_interval=30, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=datamodule)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    metrics = trainer.callback_metrics
    for key in ("train/grad_norm", "train/lr", "train/tokens_per_s", "val/loss", "val/ppl"):
        assert key in metrics, key
    assert metrics["val/ppl"].item() == pytest.approx(torch.exp(metrics["val/loss"]).item(), rel=1e-5)
    assert metrics["train/tokens"].item() == 60 * 8 * 32


def test_checkpoint_alone_rebuilds_the_module(tmp_path, datamodule):
    module = PretrainModule(MODEL)
    trainer = _trainer(tmp_path, 3, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # nothing in it needs unpickling beyond tensors and dicts
    assert checkpoint["hyper_parameters"]["model"] == MODEL
    restored = PretrainModule.load_from_checkpoint(path)
    tokens = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        assert torch.equal(restored(tokens), module(tokens))


def test_validation_loss_is_the_token_weighted_mean(tmp_path, datamodule):
    module = PretrainModule(MODEL)
    trainer = _trainer(tmp_path, 1)
    datamodule.setup()
    module.configure_model()
    (result,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    with torch.no_grad():
        losses = [module.model(b[:, :-1], targets=b[:, 1:]) * b[:, 1:].numel() for b in datamodule.val_dataloader()]
        counts = sum(b[:, 1:].numel() for b in datamodule.val_dataloader())
    assert result["val/loss"] == pytest.approx((sum(losses) / counts).item(), rel=1e-5)


class _PoisonGradients(L.Callback):
    """Makes one gradient NaN at optimizer step ``at``, as an exploding step would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == self.at:
            next(module.parameters()).grad.fill_(float("nan"))


def test_the_last_finite_checkpoint_survives_a_divergence(tmp_path, datamodule):
    module = PretrainModule(MODEL, optim=dict(lr=1e-3, warmup_steps=1))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=2)
    callbacks = [checkpoints, _PoisonGradients(at=5)]
    trainer = _trainer(tmp_path, 10, limit_val_batches=0, callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    with pytest.raises(TrainingDiverged, match="diverged at step 5: grad_norm is nan"):
        trainer.fit(module, datamodule=datamodule)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values())
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())  # the poisoned step was not applied
