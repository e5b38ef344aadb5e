"""What a non-editable install ships: every package of the source tree is listed in setup.cfg, data folders that
Python could import (the config groups) included, so setuptools installs them without a warning."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_package_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    found = set()
    for package, folder in mapping.items():
        for directory in [ROOT / folder, *(ROOT / folder).rglob("*")]:
            relative = directory.relative_to(ROOT / folder).parts
            if directory.is_dir() and all(part.isidentifier() and part != "__pycache__" for part in relative):
                found.add(".".join([package, *relative]))
    assert found - listed == set()
