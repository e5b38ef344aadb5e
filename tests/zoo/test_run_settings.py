"""How a composed config becomes a Trainer: a run shorter than its validation interval still validates, and the
progress bar shows the epoch without "/-2" when the run is bounded by steps."""

from types import SimpleNamespace

from hydra import compose, initialize_config_module

from zoo.callbacks.progress import ProgressBar
from zoo.run import trainer_settings


def _settings(*overrides):
    with initialize_config_module("zoo.configs", version_base="1.3"):
        return trainer_settings(compose("fit", overrides=list(overrides)))


def test_a_run_shorter_than_its_validation_interval_validates_at_its_end():
    assert _settings("trainer.max_steps=50")["val_check_interval"] == 50  # docs/cli.md's example
    assert _settings("trainer.max_steps=500")["val_check_interval"] == 100
    assert _settings("trainer.max_steps=-1")["val_check_interval"] == 100


def test_the_progress_bar_shows_no_negative_epoch():
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=500)
    assert bar._get_train_description(2).strip() == "Epoch 2"  # Lightning's own bar: "Epoch 2/-2"
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
