"""Build everything a composed config names, then fit, validate or test. The one place objects are built.

Order: data (which fixes the tokenizer) → model config (vocabulary from the tokenizer, or the architecture of
``model.init_from``) → LightningModule → Trainer (strategy, logger, checkpoints) → run. The run directory ends
up holding ``tb/`` (TensorBoard), ``checkpoints/`` (``last.ckpt`` every ``checkpoint.every_n_train_steps``
and at the end, ``best.ckpt`` by ``val/loss``), ``tokenizer/`` and ``metrics.json``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from zoo.callbacks.budget_metrics import BudgetMetrics
from zoo.callbacks.fact_recall import FactRecall
from zoo.callbacks.probes import LoopProbes
from zoo.callbacks.progress import ProgressBar
from zoo.errors import ConfigError, ZooError, require_int
from zoo.hub.store import native_model_type, starting_point
from zoo.io.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from zoo.io.files import atomic_file
from zoo.models import config_from_dict
from zoo.models.hf import HFConfig, resolve_path, transformers_config
from zoo.modules.pretrain import PretrainModule
from zoo.rollout.callback import RolloutCallback

log = logging.getLogger("zoo")

VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this, as Pythia pads 50277 to 50304


def _model_tokenizer(cfg: DictConfig, command: str) -> Path | None:
    """The tokenizer that comes with the weights: that of ``model.init_from`` (a hub entry or a Hugging Face
    directory), the run directory of the checkpoint that validate/test evaluate, or an hf model's directory."""
    if init_from := cfg.model.get("init_from"):
        return starting_point(init_from)[1]
    if command != "fit" and cfg.ckpt_path:
        directory = checkpoint_file(cfg.ckpt_path).parent.parent / "tokenizer"
    elif cfg.model.get("arch") == "hf" or cfg.model.get("path"):
        directory = resolve_path(HFConfig(path=cfg.model.get("path")).path)  # one line without a path
    else:
        return None
    return directory if directory.is_dir() else None


def build_data(cfg: DictConfig, command: str) -> L.LightningDataModule:
    overrides = {}
    if "tokenizer" in cfg.data and cfg.data.tokenizer is None and (tokenizer := _model_tokenizer(cfg, command)):
        overrides["tokenizer"] = str(tokenizer)  # the weights' own tokenizer
    return instantiate(cfg.data, **overrides, _convert_="all")


HF_LOADING = ("dtype", "attn_implementation", "gradient_checkpointing")  # model=hf settings kept by init_from
TRAINING_SETTINGS = ("gradient_checkpointing",)  # zoo's own models' settings kept by init_from


def model_config(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The module's ``model`` settings: the architecture's config (from ``model.init_from`` when set), with
    ``init_from`` and ``lora`` (the policy's adapters, :mod:`zoo.training.lora`) passed on beside it."""
    values = OmegaConf.to_container(cfg.model, resolve=True)
    lora = values.pop("lora", None)
    return {**_architecture(values, datamodule), **({"lora": lora} if lora else {})}


def _architecture(values: dict[str, Any], datamodule: L.LightningDataModule) -> dict[str, Any]:
    loading = {k: values[k] for k in HF_LOADING if k in values}  # how to load an HF model, where it says
    training = {k: values[k] for k in TRAINING_SETTINGS if k in values}  # how to train any model, where it says
    impl = values.pop("impl", "auto")  # who implements a Hugging Face directory's model (zoo.hub.store)
    if values.get("arch") != "hf" and "path" in values:  # method=sft|grpo|ppo model.path=DIR: a model on disk
        path = values.pop("path")
        if path and not values.get("init_from") and native_model_type(resolve_path(path), impl):
            values = {"init_from": path, **training}  # zoo's own implementation of its family, the directory's weights
        elif path:
            values = {"arch": "hf", "path": path, "init_from": values.get("init_from"), **loading}
    if init_from := values.get("init_from"):
        config = starting_point(init_from, impl)[0]
        if config["arch"] == "hf":  # how to load it stays the user's choice (model=hf model.dtype=bfloat16 ...)
            config |= loading
        else:
            config |= training
        values = {**config, "init_from": init_from}
        log.info("model: architecture and weights from %s", init_from)
    if values.get("arch") == "hf":
        return _hf_model_config(values, datamodule)
    vocab = datamodule.vocab_size
    if values.get("vocab_size") is None:
        values["vocab_size"] = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    elif values["vocab_size"] < vocab:
        raise ConfigError(f"model.vocab_size={values['vocab_size']} is smaller than the tokenizer's {vocab} tokens")
    seq_len, positions = datamodule.hparams.get("seq_len"), values.get("max_position_embeddings")
    if seq_len and positions and seq_len > positions:
        raise ConfigError(f"data.seq_len={seq_len} exceeds the model's max_position_embeddings={positions}")
    return values


def _hf_model_config(values: dict[str, Any], datamodule: L.LightningDataModule) -> dict[str, Any]:
    """An hf model's settings, checked against its transformers config before anything is built: an
    architecture transformers cannot build, or a tokenizer or ``data.seq_len`` the model cannot take, in one line."""
    config_from_dict({k: v for k, v in values.items() if k != "init_from"})  # its own fields checked first
    local = Path(values["path"]).expanduser()
    if local.is_dir():  # absolute, so that the run's checkpoint rebuilds it from any working directory
        values = {**values, "path": str(local.resolve())}
    architecture = transformers_config(values["path"])
    rows = architecture.get_text_config().vocab_size
    if datamodule.vocab_size > rows:
        raise ConfigError(
            f"the tokenizer has {datamodule.vocab_size} tokens, the model at {values['path']} only {rows} "
            "embedding rows; use the model's own tokenizer (data.tokenizer=null)"
        )
    seq_len = datamodule.hparams.get("seq_len")
    positions = getattr(architecture.get_text_config(), "max_position_embeddings", None)
    if seq_len and positions and seq_len > positions:
        raise ConfigError(f"data.seq_len={seq_len} exceeds the model's max_position_embeddings={positions}")
    return values


def build_module(command: str, cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    if command != "fit" and cfg.ckpt_path:
        checkpoint = checkpoint_file(cfg.ckpt_path)
        settings = read_checkpoint(checkpoint, mmap=True).get("hyper_parameters", {})  # one line if not a checkpoint
        log.info("module: %s from %s", cfg.module._target_, checkpoint)
        module_class = get_class(cfg.module._target_)
        hint = "give its run directory (the run's own settings are used) or its module, e.g. method=grpo"
        foreign = sorted(set(settings) - set(inspect.signature(module_class.__init__).parameters))
        if foreign:  # written by another kind of module (an RL run's checkpoint read as pretraining, ...)
            raise ConfigError(
                f"{checkpoint}: a module with {', '.join(foreign)} settings, not a {module_class.__name__}; {hint}"
            )
        try:
            module = module_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
        except ZooError:
            raise
        except Exception as e:
            raise ConfigError(
                f"{checkpoint}: cannot be loaded as a {module_class.__name__} ({type(e).__name__}: {e}); {hint}"
            ) from None
        rows = getattr(module.model_config, "vocab_size", None)  # an hf model: checked by _hf_model_config
        if rows is not None and datamodule.vocab_size > rows:
            raise ConfigError(
                f"{checkpoint}: the data's tokenizer has {datamodule.vocab_size} tokens, the model only "
                f"{rows}; evaluate it with its own tokenizer: give its run directory"
            )
        return module
    module = instantiate(cfg.module, model=model_config(cfg, datamodule), _convert_="all")
    log.info("module: %s, model %s", cfg.module._target_, module.hparams.model["arch"])
    return module


def _resume_checkpoint(run_dir: str) -> Path | None:
    """The checkpoint ``resume=`` continues from; None (the run starts again with its own settings, and the log
    says so) when it was killed before its first checkpoint."""
    path = Path(run_dir).expanduser()
    if path.is_dir() and not (path / "checkpoints" / "last.ckpt").is_file():
        log.warning("resume: %s has no checkpoint yet (killed before its first); starting it again from step 0", path)
        return None
    return checkpoint_file(run_dir)


def checkpoint_file(path: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return path


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """The Trainer's settings, checked: one line naming a setting that cannot work here. A validation interval
    longer than the run is cut to the run, so that every run ends validated."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    max_steps = settings.get("max_steps", -1)
    require_int("trainer.max_steps", max_steps, -1)
    if max_steps == 0:
        raise ConfigError("trainer.max_steps must be -1 (no limit) or >= 1, got 0")
    accelerator = str(settings.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu) needs a CUDA device and this machine has none; "
            "use trainer=default"
        )
    interval = settings.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and 0 < max_steps < interval:
        log.info("trainer: val_check_interval %d is longer than the run: validating at step %d", interval, max_steps)
        settings["val_check_interval"] = max_steps
    return settings


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    settings = trainer_settings(cfg)
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if cfg.get("logger") else False
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(
            dirpath=checkpoints,
            filename="last",
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            save_top_k=1,
            enable_version_counter=False,
        ),
        ModelCheckpoint(
            dirpath=checkpoints,
            filename="best",
            monitor=cfg.checkpoint.monitor,
            mode=cfg.checkpoint.mode,
            save_top_k=cfg.checkpoint.save_top_k,
            enable_version_counter=False,
        ),
    ]
    minutes = cfg.checkpoint.get("every_n_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0):
        raise ConfigError(f"checkpoint.every_n_minutes must be a number > 0 or null, got {minutes!r}")
    if minutes:  # a time-based interval too: last.ckpt at least this often
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints,
                filename="last",
                train_time_interval=dt.timedelta(minutes=minutes),
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    if cfg.get("rollout"):
        callbacks.append(instantiate(cfg.rollout))
    if cfg.get("sampler"):
        callbacks.append(instantiate(cfg.sampler))
    if cfg.probes.every_n_steps:
        callbacks.append(LoopProbes(cfg.probes.every_n_steps, cfg.probes.samples))
    if "recall_facts" in cfg.data:  # knowledge data: retention and acquisition after every validation
        callbacks.append(FactRecall())
    if cfg.data.get("budgets"):  # thinking budgets: accuracy, length and adherence per level after every validation
        callbacks.append(BudgetMetrics())
    if settings.get("enable_progress_bar", True):
        callbacks.append(ProgressBar())
    strategy = instantiate(cfg.strategy)
    log.info(
        "trainer: strategy %s, %s",
        type(strategy).__name__ if not isinstance(strategy, str) else strategy,
        settings,
    )
    return L.Trainer(
        **settings,
        strategy=strategy,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def build(command: str, cfg: DictConfig, run_dir: Path) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Everything a run needs, built and checked, nothing trained: the data, the module and the trainer with its
    callbacks (a setting any of them refuses is a one-line error here)."""
    datamodule = build_data(cfg, command)
    module, trainer = build_module(command, cfg, datamodule), build_trainer(cfg, run_dir)
    for callback in trainer.callbacks:
        if isinstance(callback, RolloutCallback):  # the engine it picks for this network runs these settings
            callback.check(module.model_config)
    return datamodule, module, trainer


def run(command: str, cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer = build(command, cfg, run_dir)
    if trainer.is_global_zero and datamodule.tokenizer is not None:
        datamodule.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    if command == "fit":
        resume = _resume_checkpoint(cfg.resume) if cfg.resume else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        if not trainer.fast_dev_run:  # the final state, whatever the checkpoint interval
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    elif command == "validate":
        trainer.validate(module, datamodule=datamodule)
    else:
        trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    metrics.update(_model_size(module.model))
    if command == "fit" and isinstance(module, PretrainModule):
        metrics["train/median_tokens_per_s"] = module.median_tokens_per_s
    if trainer.is_global_zero:
        with atomic_file(run_dir / "metrics.json", "w") as f:
            json.dump(metrics, f, indent=2)
        log.info("run dir: %s", run_dir)
        log.info("metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return metrics


def _model_size(model) -> dict[str, int]:
    """The network's parameters (a 4-bit weight counted by its logical shape; LoRA adapters apart), those outside
    the input embedding and output head (the MeSH paper's Table 5 count), and the trainable ones."""

    def count(p) -> int:
        state = getattr(p, "quant_state", None)  # bitsandbytes' 4-bit: two weights a byte
        return state.shape.numel() if state is not None else p.numel()

    total = sum(count(p) for name, p in model.named_parameters() if ".lora_" not in name)
    embedding = sum(p.numel() for p in {id(p): p for p in (model.embed.weight, model.lm_head.weight)}.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model/parameters": total,
        "model/non_embedding_parameters": total - embedding,
        "model/trainable_parameters": trainable,
    }
