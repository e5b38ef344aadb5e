"""The README and docs/ claim only what exists: the config-group table (docs/cli.md) lists every option there is
and no other, every ``group=option`` they name exists, and every ``zoo fit|validate|test`` line they show builds
(composed, then its data, module and trainer with every callback built and checked, nothing trained)."""

import json
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from zoo.cli.common import GROUPS
from zoo.cli.config import group_options, register_presets
from zoo.hub.store import Entry, Hub
from zoo.run import build

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


def _unique_commands() -> dict[tuple[str, tuple[str, ...]], str]:
    """Each command once (several pages show the same one): (zoo's subcommand, the words) -> where it is shown."""
    unique = {}
    for line, words in _commands():
        unique.setdefault((line.split(": ", 1)[1].split()[1], tuple(words)), line)
    return unique


COMMANDS = _unique_commands()
SHIPPED = {e.name for e in Hub(store="/nonexistent").entries() if isinstance(e, Entry)}  # zoo's own entries
# what a placeholder for the reader's own data file holds, by task: rows in the task's JSONL format
READER_ROWS = {
    "gsm8k": {"question": "Tom has 2 apples and buys 3 more. How many apples has he?", "answer": "2 + 3 = 5\n#### 5"},
    "math": {"problem": "What is $2 + 3$?", "answer": "5"},
    "search": {"question": "who wrote the play hamlet", "answers": ["William Shakespeare"]},
}


def _reader_file(cfg, tmp_path: Path) -> str:
    """A stand-in for the reader's own data file, in the format the composed data module reads."""
    task = cfg.data.get("task")
    if task is None:  # pretraining text: a folder of text files
        folder = tmp_path / "corpus"
        folder.mkdir(exist_ok=True)
        (folder / "text.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 400)
        return str(folder)
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(READER_ROWS[task]) + "\n" for _ in range(48)))
    return str(path)


@pytest.mark.parametrize("command, words", list(COMMANDS), ids=list(COMMANDS.values()))
def test_every_command_line_builds(command, words, options, hf_models, tmp_path):
    """Composed, then built as ``zoo.run.run`` builds it: a setting refused by the data, the module or a callback
    fails here. What belongs to the reader stands in: a run or hub entry of their own is left out (a preset's
    ``init_from`` of an entry an earlier step pushes too), their model directory is a tiny Qwen2, their data files
    placeholders in the task's format, their GPU this CPU; the data and the tokenizer to train shrink (both are
    made when the model's vocabulary is read), and a pretraining corpus takes the shipped pythia-tiny's tokenizer."""
    overrides, missing_files = [], []
    for word in words:
        key, value = word.split("=", 1)
        if key in ("resume", "ckpt_path") or value.startswith("hub:"):
            continue  # a run or entry of the reader's own
        if key == "model.path" and not Path(value).exists():
            value = str(hf_models["qwen2"])
        if key in ("data.path", "data.val_path") and not Path(value).exists():
            missing_files.append(key)
            continue
        overrides.append(f"{key}={_first_of_sweep(value)}")
    with initialize_config_module("zoo.configs", version_base="1.3"):
        cfg = compose("fit", overrides=overrides)
    with open_dict(cfg):
        for key in missing_files:
            cfg.data[key.split(".")[1]] = _reader_file(cfg, tmp_path)
        init_from = cfg.model.get("init_from")
        if init_from and init_from.startswith("hub:") and init_from[4:] not in SHIPPED:
            cfg.model.init_from = None  # pushed by an earlier step of the page
        if cfg.trainer.get("accelerator") == "gpu":
            cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1
        trains_a_tokenizer = not (cfg.model.get("path") or cfg.model.get("init_from"))  # none comes with weights
        if cfg.data.get("task") is None and "tokenizer" in cfg.data and not cfg.data.tokenizer and trains_a_tokenizer:
            cfg.data.tokenizer = "hub:pythia-tiny"  # a corpus's tokenizer, not one trained on the whole corpus again
        for key, most in (("train_size", 64), ("val_size", 16), ("vocab_size", 512)):
            if isinstance(cfg.data.get(key), int):
                cfg.data[key] = min(cfg.data[key], most)
    build(command, cfg, tmp_path / "run")
