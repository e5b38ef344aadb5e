"""How a composed config becomes a Trainer: a run shorter than its validation interval still validates, and the
progress bar names the step instead of "Epoch 2/-2"."""

from types import SimpleNamespace

from hydra import compose, initialize_config_module

from zoo.callbacks.progress import ProgressBar
from zoo.run import trainer_settings


def _settings(*overrides):
    with initialize_config_module("zoo.configs", version_base="1.3"):
        return trainer_settings(compose("fit", overrides=list(overrides)))


def test_a_run_shorter_than_its_validation_interval_validates_at_its_end():
    assert _settings("trainer.max_steps=50")["val_check_interval"] == 50  # the README's example
    assert _settings("trainer.max_steps=500")["val_check_interval"] == 100
    assert _settings("trainer.max_steps=-1")["val_check_interval"] == 100


def test_the_progress_bar_shows_the_step_not_a_negative_epoch():
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=500, global_step=42)
    description = bar._get_train_description(2)
    assert description.startswith("Epoch 2 · step 42/500") and "-2" not in description
