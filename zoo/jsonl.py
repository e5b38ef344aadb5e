"""JSON Lines input: every non-blank line one JSON object; a malformed line is an error naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import DataError


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` for every non-blank line of ``path``."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a row must be a JSON object")
            rows.append((number, row))
    return rows
