"""The README and docs/ claim only what exists: the config-group table (docs/cli.md) lists every option there is
and no other, every ``group=option`` they name exists, and every ``zoo fit|validate|test`` line they show
composes."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from zoo.cli.common import GROUPS
from zoo.cli.config import group_options, register_presets

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]
}
NOT_AN_OPTION = {("model", "pythia-7t")}  # docs/cli.md's example of an unknown option


@pytest.fixture(scope="module")
def options():
    register_presets()
    with initialize_config_module("zoo.configs", version_base="1.3"):
        return {group: set(group_options(group)) for group in GROUPS}


def test_the_group_table_lists_every_option_and_no_other(options):
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", PAGES["docs/cli.md"], re.MULTILINE))
    assert set(rows) == set(GROUPS)
    for group, cell in rows.items():
        named = set(re.findall(r"`([^`]+)`", cell))
        assert named == options[group], group


def test_every_group_option_the_pages_name_exists(options):
    named = {
        (page, group, option)
        for page, text in PAGES.items()
        for group, option in re.findall(rf"(?<![.\w])({'|'.join(GROUPS)})=([A-Za-z0-9_.\-]+)", text)  # not llm.model=
        if (group, option) not in NOT_AN_OPTION
    }
    assert {page for page, _, _ in named} >= {"README.md", "docs/cli.md", "docs/rl.md"}
    missing = sorted(n for n in named if not n[2].isupper() and n[2].rstrip(".,") not in options[n[1]])  # NAME: a slot
    assert not missing


def _commands():
    for page, text in PAGES.items():
        yield from ((f"{page}: {line}", words) for line, words in _page_commands(text))


def _page_commands(text):
    for line in re.findall(r"^zoo (?:fit|validate|test) (?:.*\\\n)*.*$", text, re.MULTILINE):
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
