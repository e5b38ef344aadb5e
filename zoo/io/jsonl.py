"""JSON Lines input: every non-blank line one JSON object; a malformed line is an error naming file and line.

Lines end at ``\n`` (and ``\r\n``) only: JSON strings may hold the other characters ``str.splitlines`` cuts at
(U+2028, U+2029, U+0085, form and group separators), raw."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import DataError
from zoo.io.files import read_utf8


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` for every non-blank line of ``path``; a file without rows is an error."""
    path = Path(path)
    rows = []
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            reason = f"{e.msg.removesuffix(' at')} at column {e.colno}"  # json's msg alone can end in "at"
            raise DataError(f"{path}:{number}: not valid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a row must be a JSON object, not {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise DataError(f"{path}: the file is empty (no JSON rows)")
    return rows
