"""The config groups: the paper presets made selectable, ``zoo ls``, and the check of a command line's overrides
before anything runs (an unknown group option, key or a value of the wrong kind stops with one line)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from zoo.cli.common import CONFIG_MODULE, GROUPS, fail

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
                groups_only = [c for c in combo if c.split("=", 1)[0] in GROUPS]
                fail(_composition_error(e, lambda groups_only=groups_only: compose("fit", overrides=groups_only)))
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


def _keys_named(node, name: str, prefix: str = "") -> list[str]:
    """The full keys whose last part is ``name``, without resolving any interpolation."""
    from omegaconf import OmegaConf

    found = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if key == name:
            found.append(path)
        if path != "hydra" and not OmegaConf.is_interpolation(node, key) and OmegaConf.is_dict(node[key]):
            found.extend(_keys_named(node[key], name, f"{path}."))
    return found


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


def _composition_error(error: Exception, chosen_config=None) -> str:
    """One line for a failed composition; an unknown key names the keys of the same name elsewhere in the config
    of the chosen groups (``chosen_config()``), e.g. ``module.algorithm.micro_batch_tokens`` for
    ``module.micro_batch_tokens``."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__ or error
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
        key = cause.full_key
        near = _keys_named(chosen_config(), key.rsplit(".", 1)[-1]) if chosen_config is not None else []
        hint = f"; did you mean {' or '.join(near[:3])}?" if near else ""
        return f"unknown key '{key}'{hint} (to add a new key, write +{key}=VALUE)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
