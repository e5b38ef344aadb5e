"""``zoo fit|validate|test``: a run's overrides (a resumed or evaluated run's own, in today's spelling), composed by
Hydra and run by :func:`zoo.run.run`; a run that fails before its first checkpoint leaves no directory."""

from __future__ import annotations

import contextlib
import sys
from importlib import resources
from pathlib import Path

from zoo.cli.common import CONFIG_MODULE, fail, user_error
from zoo.cli.config import check_overrides
from zoo.errors import ConfigError, TrainingDiverged, ZooError


# -- running ------------------------------------------------------------------------------------------------
def _run_overrides(command: str, overrides: list[str]) -> list[str]:
    """A run's own settings under the user's overrides. ``resume=DIR`` (fit): the run's overrides, then these,
    and the run's directory as Hydra's. ``ckpt_path=`` (validate, test) of a run directory or of a checkpoint in
    one: the run's overrides (its module, task, data options; not its trainer, checkpoint and debug settings),
    then these; the evaluation gets a new directory."""
    key = "resume=" if command == "fit" else "ckpt_path="
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(key)]
    if not given:
        return overrides
    path = Path(given[-1]).expanduser().resolve()
    run_dir = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    saved = run_dir / ".hydra" / "overrides.yaml" if run_dir else None
    if saved is None or not saved.is_file():
        if command == "fit":
            fail(f"resume={given[-1]}: not a zoo run directory (no .hydra/overrides.yaml)")
        return overrides  # a checkpoint file of its own: the settings given here
    import yaml

    own = yaml.safe_load(saved.read_text()) or []
    previous = [_today(o) for o in own if not o.startswith(("resume=", "ckpt_path=", "hydra."))]
    if command == "fit":
        return [*previous, *overrides, f"hydra.run.dir={run_dir}"]
    # what the run trained on and with, not how long or how often it trained and validated
    training_only = ("trainer.", "+trainer.", "checkpoint.", "debug=", "probes.")
    return [*[o for o in previous if not o.startswith(training_only)], *overrides]


def _today(override: str) -> str:
    """A saved run's override in today's spelling: a method chosen through the model group (``model=grpo``, before
    methods had a group of their own) is ``method=grpo``."""
    key, _, value = override.partition("=")
    methods = {p.name.removesuffix(".yaml") for p in (resources.files(CONFIG_MODULE) / "method").iterdir()}
    return f"method={value}" if key == "model" and value in methods else override


def run_hydra(command: str, args: list[str]) -> None:
    import hydra
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException

    parser = get_args_parser()
    parser.error = lambda message: fail(f"{message} (zoo --help)")
    parsed = parser.parse_args(args)
    overrides = list(parsed.overrides)
    flags_only = list(args)
    for override in overrides:
        flags_only.remove(override)
    if not (parsed.help or parsed.hydra_help):
        overrides = _run_overrides(command, overrides)
        check_overrides(overrides)
    original_argv = sys.argv

    def task(cfg) -> None:
        from zoo.run import run  # imported here: a mistake found in the overrides stops before torch loads

        sys.argv = original_argv  # Lightning's DDP launcher starts the other ranks with this command line
        run_dir = Path(HydraConfig.get().runtime.output_dir)

        def discard() -> None:
            if not (command == "fit" and cfg.get("resume")):  # a resumed run's directory is the user's run
                _discard_unused(run_dir)

        try:
            run(command, cfg, run_dir)
        except InstantiationException as e:
            discard()
            cause = e.__cause__
            if isinstance(cause, ZooError):
                user_error(cause)
            if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
                key = str(e).rsplit("full_key:", 1)[-1].strip() if "full_key:" in str(e) else "?"
                user_error(ConfigError(f"{key}: {cause}"))
            raise
        except ZooError as e:
            if not isinstance(e, TrainingDiverged):  # a diverged run keeps its curves: they show how it diverged
                discard()
            user_error(e)

    entry = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="fit")(task)
    sys.argv = [original_argv[0], *flags_only, *overrides]
    try:
        entry()
    finally:
        sys.argv = original_argv


def _discard_unused(run_dir: Path) -> None:
    """A run that failed before it wrote a checkpoint or its metrics leaves no directory behind (what it holds,
    Hydra's files, a log, the tokenizer, an empty TensorBoard file, is made again by the next run)."""
    import shutil

    if run_dir.is_dir() and not any(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # runs/<name>/ and runs/ too, when they held only this run
            run_dir.parent.rmdir()
            run_dir.parent.parent.rmdir()
