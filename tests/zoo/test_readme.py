"""The README claims only what exists: its config-group table lists every option there is and no other, every
``group=option`` it names exists, and every ``zoo fit|validate|test`` line it shows composes."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from zoo.cli import GROUPS, group_options, register_presets

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NOT_AN_OPTION = {("model", "pythia-7t")}  # the README's example of an unknown option


@pytest.fixture(scope="module")
def options():
    register_presets()
    with initialize_config_module("zoo.configs", version_base="1.3"):
        return {group: set(group_options(group)) for group in GROUPS}


def test_the_group_table_lists_every_option_and_no_other(options):
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", README, re.MULTILINE))
    assert set(rows) == set(GROUPS)
    for group, cell in rows.items():
        named = set(re.findall(r"`([^`]+)`", cell))
        assert named == options[group], group


def test_every_group_option_the_readme_names_exists(options):
    named = (
        set(re.findall(rf"(?<![.\w])({'|'.join(GROUPS)})=([A-Za-z0-9_.\-]+)", README)) - NOT_AN_OPTION
    )  # not llm.model=
    assert named
    missing = sorted((g, o) for g, o in named if not o.isupper() and o.rstrip(".,") not in options[g])  # NAME: a slot
    assert not missing


def _commands():
    for line in re.findall(r"^zoo (?:fit|validate|test) (?:.*\\\n)*.*$", README, re.MULTILINE):
        line = line.replace("\\\n", " ")  # a command continued over lines
        command = line.split(" #")[0].replace("$HOME", "/home/reader")  # what the reader's shell expands
        words = [w for w in shlex.split(command)[2:] if w != "-m"]
        if words[:1] != ["--cfg"]:
            yield line, words


def _first_of_sweep(value: str) -> str:
    """A sweep's first value (``a,b,c``); commas inside braces or brackets belong to one value."""
    depth = 0
    for i, c in enumerate(value):
        depth += (c in "{[") - (c in "}]")
        if c == "," and depth == 0:
            return value[:i]
    return value


@pytest.mark.parametrize("line, words", list(_commands()), ids=[line for line, _ in _commands()])
def test_every_command_line_composes(line, words, options):
    overrides = []
    for word in words:
        key, value = word.split("=", 1)
        if key in ("resume", "ckpt_path") or value.startswith("hub:"):
            continue  # a run or entry of the reader's own
        overrides.append(f"{key}={_first_of_sweep(value)}")
    with initialize_config_module("zoo.configs", version_base="1.3"):
        compose("fit", overrides=overrides)
