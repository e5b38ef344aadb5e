"""The ``zoo`` command.

``zoo fit|validate|test [OVERRIDES]`` compose ``configs/fit.yaml`` with Hydra (groups ``model=``, ``data=``,
``trainer=``, ``strategy=``, ``logger=``, ``experiment=``, ``debug=``; keys ``a.b=c``; ``-m`` sweeps) and run
:func:`zoo.run.run`. Overrides are checked before anything runs: an unknown group option or key stops with one
line that names it. ``zoo ls`` lists the groups and their options; ``zoo hub ...`` manages checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

from zoo.errors import ConfigError, DataError, ZooError

CONFIG_MODULE = "zoo.configs"
GROUPS = (
    "model", "method", "module", "data", "rollout", "sampler", "trainer", "strategy", "logger", "experiment", "debug"
)  # fmt: skip
USAGE = """usage: zoo COMMAND [ARGS]

commands:
  fit [OVERRIDES]        train (default: a tiny Pythia on zoo's embedded corpus, on CPU)
  validate [OVERRIDES]   evaluate on the val split (ckpt_path=RUN_DIR_OR_CKPT, or model.init_from=hub:NAME)
  test [OVERRIDES]       evaluate on the test split
  ls                     the config groups and their options
  hub push|list|show|...  the checkpoint hub: push, list, show, pull, merge, export (zoo hub --help)
  probe SOURCE           loop probes of a run, .ckpt or hub:NAME on validation text (zoo probe --help)
  infusion analyze SWEEP collapse points and their scaling law for a knowledge-infusion sweep
  budget SOURCE          a policy under thinking budgets: accuracy, length, adherence, truncation (zoo budget -h)
  synth run|metrics ...  DESIGNER data synthesis and the diversity metrics of a question set (zoo synth -h)

overrides (Hydra): model=mesh  trainer.max_steps=50  data.path=corpus.txt  +trainer.profiler=simple
  method=grpo picks a training recipe apart from the network (model=NAME, or model.path=DIR)
  -m / --multirun sweeps:  zoo fit -m module.optim.lr=1e-3,3e-3
  resume=RUN_DIR continues a killed run from its last checkpoint with the same settings.
  zoo fit --cfg job prints the composed config; zoo fit --help shows Hydra's help.
"""


def fail(message: str, code: int = 2) -> None:
    print(f"zoo: error: {message}", file=sys.stderr)
    raise SystemExit(code)


PRESET_DESCRIPTIONS: dict[str, str] = {}


def register_presets() -> None:
    """Make the paper presets of every model family selectable as ``model=NAME``."""
    from hydra.core.config_store import ConfigStore

    from zoo.models import PRESETS

    store = ConfigStore.instance()
    for name, config in PRESETS.items():
        store.store(group="model", name=name, node={**config.to_dict(), "init_from": None})
        PRESET_DESCRIPTIONS[name] = (
            f"EleutherAI/{name}: {config.num_hidden_layers} layers x {config.hidden_size} (its config.json)"
            if config.arch == "gpt_neox"
            else f"MeSH paper: {config.arch} {config.layout} on Pythia's {config.hidden_size}-wide dims"
        )


# -- listing ------------------------------------------------------------------------------------------------
def _config_loader():
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader()


def group_options(group: str) -> list[str]:
    return sorted(_config_loader().get_group_options(group))


def _description(group: str, option: str) -> str:
    """The option's description: the comment lines that open its YAML file, whole."""
    file = resources.files(CONFIG_MODULE) / group / f"{option}.yaml"
    if not file.is_file():
        return PRESET_DESCRIPTIONS.get(option, "")
    lines = []
    for line in file.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def list_groups(describe: bool = True) -> None:
    """Every group and its options: with their descriptions (``zoo ls``), or one line a group (``--help``)."""
    from hydra import initialize_config_module
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("group", "option", "what it is", box=None, pad_edge=False)
    if not describe:
        table = Table("group", "options (zoo ls describes each)", box=None, pad_edge=False)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for group in GROUPS:
            options = group_options(group)
            if not describe:
                table.add_row(group, escape(", ".join(options)))
                continue
            for i, option in enumerate(options):
                table.add_row(group if i == 0 else "", escape(option), escape(_description(group, option)))
    Console(width=120).print(table)


# -- checking overrides -------------------------------------------------------------------------------------
def _single_choice_overrides(overrides: list[str]) -> tuple[list[list[str]], list]:
    """Override lists that together try every value of every sweep once (each sweep varied alone), and the
    parsed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        fail(f"cannot parse the overrides: {str(e).splitlines()[0]}")
    base = [
        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
        for o in parsed
    ]
    combos = [base]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            for value in list(o.sweep_string_iterator())[1:]:
                combos.append([*base[:i], f"{o.get_key_element()}={value}", *base[i + 1 :]])
    return combos, parsed


def check_overrides(overrides: list[str]) -> None:
    """Compose the config with ``overrides``; stop with one line naming any unknown group option or key."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    combos, parsed = _single_choice_overrides(overrides)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for o in parsed:
            if o.key_or_group in GROUPS and not o.is_delete():
                values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
                options = group_options(o.key_or_group)
                for value in values:
                    if o.key_or_group == "model" and str(value) in group_options("method"):
                        fail(f"unknown model {str(value)!r}: {value} is a method, chosen apart from the network: "
                             f"method={value} (model=NAME, or model.path=DIR, picks the network)")  # fmt: skip
                    if value is not None and value != "null" and str(value) not in options:
                        fail(f"unknown {o.key_or_group} {str(value)!r}; options: {', '.join(options)}")
        values = [o for o in parsed if o.key_or_group not in GROUPS and not o.is_delete() and not o.is_add()]
        values = [o for o in values if not o.key_or_group.startswith("hydra")]
        for combo in combos:
            try:
                cfg = compose("fit", overrides=combo, return_hydra_config=True)
                defaults = compose("fit", overrides=[c for c in combo if c.split("=", 1)[0] in GROUPS])
            except (HydraException, OmegaConfBaseException) as e:
                fail(_composition_error(e))
            missing = _missing_keys(cfg)
            if missing:
                fail(f"{missing[0]} must be set, e.g. {missing[0]}=... ({', '.join(missing)} missing)")
            for o in values:
                _check_type(o.key_or_group, cfg, defaults)
        _check_writable(cfg)


def _check_type(key: str, cfg, defaults) -> None:
    """Stop before anything runs when ``key`` was given a value of another kind than its default (a word where
    a number belongs, a number where a switch belongs): one line naming the key, instead of a TypeError deep in
    Lightning. Keys whose default is null or text take anything."""
    from omegaconf import OmegaConf

    default = OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False)
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if default is None or value is None or isinstance(default, str):
        return
    if isinstance(default, bool):
        accepts, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int | float):
        accepts, expected = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif OmegaConf.is_list(default):
        accepts, expected = OmegaConf.is_list(value), "a list, e.g. [1, 2]"
    else:
        return
    if not accepts:
        fail(f"{key}={value}: expected {expected} (the default is {default})")


def _check_writable(cfg) -> None:
    """Stop before anything runs when the run directory cannot be created (a file in the way, no permission)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(cfg)  # lets ${hydra:...} in the directory's name resolve
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        try:
            directory = Path(str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True))).expanduser().absolute()
        except Exception:  # an interpolation only a real run can resolve: Hydra reports it then
            continue
        existing = next(p for p in (directory, *directory.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            problem = "is not a directory" if not existing.is_dir() else "is not writable"
            fail(f"{key}={directory}: cannot create the run directory ({existing} {problem})")


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Keys still set to ``???`` (values a user must give), without resolving any interpolation."""
    from omegaconf import OmegaConf

    missing = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            missing.append(path)
        elif not OmegaConf.is_interpolation(node, key) and OmegaConf.is_dict(node[key]):
            missing.extend(_missing_keys(node[key], f"{path}."))
    return missing


def _composition_error(error: Exception) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__ or error
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
        key = cause.full_key
        return f"unknown key '{key}' (to add a new key, write +{key}=VALUE)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


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
        from zoo.training.optim import TrainingDiverged

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
                _user_error(cause)
            if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
                key = str(e).rsplit("full_key:", 1)[-1].strip() if "full_key:" in str(e) else "?"
                _user_error(ConfigError(f"{key}: {cause}"))
            raise
        except ZooError as e:
            if not isinstance(e, TrainingDiverged):  # a diverged run keeps its curves: they show how it diverged
                discard()
            _user_error(e)

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


def _user_error(error: Exception) -> None:
    if os.environ.get("ZOO_DEBUG"):
        raise error
    fail(str(error))


# -- hub ----------------------------------------------------------------------------------------------------
def hub_command(args: list[str]) -> None:
    from zoo.hub.store import Entry, Hub, HubError

    parser = argparse.ArgumentParser(prog="zoo hub", description="zoo's checkpoint hub")
    parser.add_argument("--store", help="hub store directory (default: $ZOO_HUB or <zoo cache>/hub)")
    sub = parser.add_subparsers(dest="action", required=True)
    push = sub.add_parser("push", help="publish a run directory or a .ckpt file")
    push.add_argument("source")
    push.add_argument("--name", required=True)
    push.add_argument("--force", action="store_true", help="replace an existing entry")
    sub.add_parser("list", help="list entries")
    show = sub.add_parser("show", help="verify an entry and print its card")
    show.add_argument("name")
    pull = sub.add_parser("pull", help="import a local HF-format directory or hf:ORG/NAME")
    pull.add_argument("source")
    pull.add_argument("--name")
    pull.add_argument("--force", action="store_true")
    merge = sub.add_parser("merge", help="merge an adapter entry (a LoRA run) into its base as a full entry")
    merge.add_argument("name")
    merge.add_argument("--name", dest="new_name", required=True, help="the full entry's name")
    merge.add_argument("--force", action="store_true", help="replace an existing entry")
    export = sub.add_parser("export", help="write an entry as an HF model directory")
    export.add_argument("name")
    export.add_argument("out_dir")
    export.add_argument("--force", action="store_true", help="overwrite the model files in a non-empty directory")
    opts = parser.parse_args(args)
    hub = Hub(opts.store)
    try:
        if opts.action == "push":
            entry = hub.push(opts.source, opts.name, overwrite=opts.force)
            print(f"pushed {entry.name} -> {entry.path}")
        elif opts.action == "pull":
            entry = hub.pull(opts.source, opts.name, overwrite=opts.force)
            print(f"pulled {opts.source} -> {entry.path}")
        elif opts.action == "merge":
            entry = hub.merge(opts.name, opts.new_name, overwrite=opts.force)
            print(f"merged {opts.name} into its base -> {entry.path}")
        elif opts.action == "export":
            print(f"exported {opts.name} -> {hub.export_hf(opts.name, opts.out_dir, overwrite=opts.force)}")
        elif opts.action == "show":
            entry = hub.entry(opts.name)
            adapter = entry.adapter
            base = entry.base_entry(adapter) if adapter is not None else None  # verified, and the one trained on
            print(entry.card)
            for relative, digest in entry.manifest["files"].items():
                print(f"  {relative:32s} {(entry.path / relative).stat().st_size:>12,d} B  sha256 {digest[:16]}…")
            print(f"verified: every sha256 matches ({entry.path})")
            if base is not None:
                print(f"verified: its base {adapter['base']} is the entry the adapters were trained on ({base.path})")
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table("name", "arch", "created", "where", box=None, pad_edge=False)
            for entry in hub.entries():
                if isinstance(entry, Entry):
                    m = entry.manifest
                    kind = m.get("arch", "?")
                    if "adapter.json" in m["files"]:  # read without verifying: listing stays cheap
                        try:
                            kind += f" + LoRA on {(entry.adapter or {}).get('base', '?')}"
                        except HubError as e:
                            kind += f" + LoRA ([red]{e}[/red])"
                    table.add_row(entry.name, kind, m.get("created", "?"), str(entry.path.parent))
                else:
                    table.add_row("[red]unreadable[/red]", "", "", str(entry))
            Console(width=160).print(table)
    except ZooError as e:
        _user_error(e)


# -- probes -------------------------------------------------------------------------------------------------
def probe_command(args: list[str]) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from zoo.analysis.probes import figures, loop_probes
    from zoo.datamodules.text import TextDataModule
    from zoo.hub.store import load_model

    parser = argparse.ArgumentParser(prog="zoo probe", description="the MeSH paper's loop probes of a model")
    parser.add_argument("source", help="a run directory, a .ckpt file, hub:NAME or a hub entry directory")
    parser.add_argument("--samples", type=int, default=16, help="validation sequences to average over")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the training setting)")
    parser.add_argument("--data", help="a text file or folder (default: the data the model was trained on)")
    parser.add_argument("--figures", help="write the probe figures as PNG files into this directory")
    opts = parser.parse_args(args)
    try:
        loaded = load_model(opts.source)
        if not hasattr(loaded.model, "trace"):
            raise ConfigError(f"{opts.source}: a Hugging Face model; the probes trace the blocks of zoo's models only")
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"{opts.source}: no tokenizer saved with this checkpoint")
        data = {k: v for k, v in loaded.data.items() if k in ("path", "dataset", "dataset_config", "text_field")}
        if opts.data:
            data = {"path": opts.data}
        seq_len = opts.seq_len or loaded.data.get("seq_len", 128)
        datamodule = TextDataModule(**data, tokenizer=str(loaded.tokenizer_dir), seq_len=seq_len)
        datamodule.setup()
        split = datamodule.val_set if len(datamodule.val_set) else datamodule.train_set
        blocks = [split[i] for i in range(min(opts.samples, len(split)))]
        report = loop_probes(loaded.model.eval(), torch.stack(blocks)[:, :-1])
    except ZooError as e:
        _user_error(e)
    console = Console(width=120)
    console.print(f"{type(loaded.model).__name__} on {len(blocks)} validation sequences of {seq_len} tokens")
    updates = Table("stage", "relative update (mean ± std)", box=None, pad_edge=False)
    for stage, mean, std in zip(report.stages, report.update_mean, report.update_std, strict=True):
        updates.add_row(stage, f"{mean:.4f} ± {std:.4f}")
    console.print(updates)
    states = Table("state", "CKA with next", "σ10/σ1", "σ25/σ1", f"σ{report.spectra.shape[1]}/σ1", box=None)
    for i, name in enumerate(report.states):
        following = f"{report.cka[i, i + 1]:.4f}" if i + 1 < len(report.states) else ""
        spectrum = report.spectra[i]
        states.add_row(name, following, *(f"{spectrum[min(k, len(spectrum)) - 1]:.4f}" for k in (10, 25, 50)))
    console.print(states)
    if opts.figures:
        out = Path(opts.figures)
        out.mkdir(parents=True, exist_ok=True)
        for tag, figure in figures(report).items():
            figure.savefig(out / f"{tag.split('/')[-1]}.png", dpi=120)
        console.print(f"figures written to {out}")


# -- knowledge infusion ---------------------------------------------------------------------------------------
def infusion_command(args: list[str]) -> None:
    from zoo.infusion.analysis import DEFAULT_DELTA, write_report

    parser = argparse.ArgumentParser(prog="zoo infusion", description="knowledge-infusion sweeps")
    sub = parser.add_subparsers(dest="action", required=True)
    analyze = sub.add_parser("analyze", help="collapse points, the scaling law and its prediction")
    analyze.add_argument("sweep", help="the sweep directory (its runs' metrics.json are read)")
    analyze.add_argument(
        "--delta", type=float, default=DEFAULT_DELTA, help="collapse: retention below (1 - delta) x its value at k=0"
    )
    opts = parser.parse_args(args)
    try:
        text, out = write_report(Path(opts.sweep), opts.delta)
    except ZooError as e:
        _user_error(e)
    print(text)
    print(f"wrote infusion.md, infusion.json, infusion.png and tensorboard/ in {out}")


# -- thinking budgets ----------------------------------------------------------------------------------------
def budget_command(args: list[str]) -> None:
    from zoo.generation import in_place_engine
    from zoo.hub.store import load_model
    from zoo.rl.methods import bard_evaluation as evaluation
    from zoo.tasks.registry import TASKS, load_problems
    from zoo.text.chat import chat_format
    from zoo.text.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="zoo budget", description="a policy under thinking budgets (BARD)")
    parser.add_argument("source", help="a run directory, a .ckpt file, hub:NAME or a hub entry directory")
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        help="budgets in tokens (default: the run's data.budgets; a run trained "
        "without budgets is asked without the control line, its answers scored against each budget)",
    )
    parser.add_argument("--problems", type=int, default=128, help="held-out questions (the run's validation set)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--no-truncation", action="store_true", help="skip the truncate-at-b baseline")
    parser.add_argument("--out", help="write budgets.md, budgets.json and budgets.png into this directory")
    opts = parser.parse_args(args)
    try:
        loaded = load_model(opts.source)
        data = loaded.data
        trained_with = (data.get("budgets") or {}).get("levels")
        levels = opts.levels or trained_with
        if not levels:
            raise ConfigError(f"{opts.source}: trained without data.budgets; give the budgets with --levels")
        if any(b < 1 for b in levels) or opts.problems < 1 or opts.max_new_tokens < 1:
            raise ConfigError("--levels, --problems and --max-new-tokens must be >= 1")
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"{opts.source}: no tokenizer saved with this checkpoint")
        task = data.get("task", "thinking")
        _, problems = load_problems(
            task, data.get("path"), data.get("val_path"), 1, opts.problems, data.get("seed", 1234), data.get("options")
        )
        if not all(p.thoughts for p in problems):
            raise ConfigError(f"{opts.source}: task {task!r} has no thinking chains (task: thinking)")
        tokenizer = load_tokenizer(loaded.tokenizer_dir)
        chat = chat_format(tokenizer, data.get("chat_template", "auto"), TASKS[task].system)
        results = evaluation.evaluate_budgets(
            in_place_engine(loaded.model.eval(), tokenizer),
            tokenizer,
            problems,
            sorted(levels),
            opts.max_new_tokens,
            chat.stop_token_ids if chat is not None else (tokenizer.eos_token_id,),
            truncation=not opts.no_truncation,
            prompt_ids=chat.prompt_ids if chat is not None else None,
            control_line=trained_with is not None,
        )
    except ZooError as e:
        _user_error(e)
    table = evaluation.markdown_table(results)
    correlation = evaluation.length_correlation(results)
    asked = "with the budget's control line" if trained_with else "as trained, without a control line"
    print(f"{opts.source}: {len(problems)} held-out questions per budget, greedy, {asked}")
    print(table)
    print(f"correlation of mean thinking length with the budget: {correlation:.3f}")
    if opts.out:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "budgets.md").write_text(table + "\n")
        rows = evaluation.report_rows(results)
        (out / "budgets.json").write_text(json.dumps({"levels": rows, "length_correlation": correlation}, indent=2))
        evaluation.figure(results).savefig(out / "budgets.png", dpi=100)
        print(f"wrote budgets.md, budgets.json and budgets.png in {out}")


# -- data synthesis ------------------------------------------------------------------------------------------
def synth_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="zoo synth", description="DESIGNER data synthesis (arXiv:2508.12726)")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run (or continue) the pipeline; its output: WORKDIR/sft.jsonl, report.md")
    run.add_argument("config", help="a config name under configs/synth (default, math) or a YAML file")
    run.add_argument("overrides", nargs="*", help="key=value settings, e.g. workdir=synth/run1 llm.model=hub:NAME")
    run.add_argument("--restart", action="store_true", help="delete what the pipeline wrote in the workdir, start over")
    metrics = sub.add_parser("metrics", help="mean cosine / L2 / 1-NN distance, K-means inertia, radius")
    metrics.add_argument("data", nargs="+", help="JSONL files (question|problem|text) or synth work directories")
    metrics.add_argument("--field", help="the text field (default: question, problem or text)")
    metrics.add_argument("--embedder", default="minilm", help="minilm | hashing | hub:NAME (a zoo model)")
    metrics.add_argument("--limit", type=int, help="a seeded sample of this many texts per set")
    metrics.add_argument("--k", type=int, default=16, help="K-means clusters for the inertia")
    metrics.add_argument("--float32", action="store_true", help="the O(N²) metrics in float32 (faster at scale)")
    metrics.add_argument("--json", help="also write the figures to this JSON file")
    opts = parser.parse_args(args)
    try:
        if opts.action == "run":
            _synth_run(opts)
        else:
            _synth_metrics(opts)
    except ZooError as e:
        _user_error(e)
    except KeyboardInterrupt:  # the requests in flight are abandoned on daemon threads: the process ends now
        kept = "; the work directory keeps every finished item: run the same command to continue"
        print(f"zoo synth: interrupted{kept if opts.action == 'run' else ''}", file=sys.stderr)
        sys.exit(130)


def _synth_run(opts) -> None:
    from zoo.synth.pipeline import Pipeline, check_workdir, load_config, restart

    config = load_config(opts.config, opts.overrides)
    workdir = Path(config["workdir"]).expanduser()
    if opts.restart:
        restart(config, workdir)
    check_workdir(config, workdir)
    out = Pipeline(config, workdir).run()
    print((workdir / "report.md").read_text())
    print(f"wrote {out} ({sum(1 for _ in out.open())} examples) and {workdir / 'report.md'}")


def _synth_metrics(opts) -> None:
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from zoo.synth.embedders import build_embedder
    from zoo.synth.metrics import METRICS, diversity
    from zoo.synth.sources import read_texts

    if opts.k < 1 or (opts.limit is not None and opts.limit < 2):
        raise ConfigError("--k must be >= 1 and --limit >= 2")
    if opts.json and not os.access(Path(opts.json).expanduser().resolve().parent, os.W_OK):
        raise ConfigError(f"--json {opts.json}: its folder does not exist or cannot be written")
    if opts.embedder == "minilm":
        embedder = build_embedder({"kind": "sentence-transformers", "path": "minilm"})
    elif opts.embedder == "hashing":
        embedder = build_embedder({"kind": "hashing"})
    else:
        embedder = build_embedder({"kind": "zoo", "model": opts.embedder})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = Table("data", "N", *METRICS, "seconds", box=None, pad_edge=False)
    results = {}
    for source in opts.data:
        texts = read_texts(source, opts.field, opts.limit)
        if len(texts) < 2:
            raise DataError(f"{source}: {len(texts)} text; the pairwise metrics need at least 2")
        start = time.perf_counter()
        vectors = embedder.embed(texts, "question").to(device)
        figures = diversity(vectors, opts.k, dtype=torch.float32 if opts.float32 else torch.float64)
        results[source] = {"n": len(texts), **figures}
        table.add_row(
            source, str(len(texts)), *(f"{figures[m]:.4f}" for m in METRICS), f"{time.perf_counter() - start:.1f}"
        )
    Console(width=200).print(table)
    if opts.json:
        try:
            Path(opts.json).expanduser().write_text(json.dumps(results, indent=2))
        except OSError as e:
            raise ConfigError(f"--json {opts.json}: cannot be written ({e.strerror or e})") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # Lightning's own use of a torch API that torch deprecated; nothing a zoo user can act on
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        register_presets()
        list_groups(describe=False)
        return
    command, rest = args[0], args[1:]
    register_presets()
    if command in ("fit", "validate", "test"):
        run_hydra(command, rest)
    elif command == "ls":
        list_groups()
    elif command == "hub":
        hub_command(rest)
    elif command == "probe":
        probe_command(rest)
    elif command == "infusion":
        infusion_command(rest)
    elif command == "budget":
        budget_command(rest)
    elif command == "synth":
        synth_command(rest)
    else:
        fail(f"unknown command {command!r}; commands: fit, validate, test, ls, hub, probe, infusion, budget, synth")


if __name__ == "__main__":
    main()
