"""A stage's output on disk, resumable: ``<workdir>/<NN>_<stage>/items.jsonl`` and ``stage.json``.

- An item-by-item stage (an LLM call per item) appends each finished batch of records to ``items.jsonl`` and
  flushes and fsyncs it, so a crash or Ctrl-C loses at most the batch in flight. On a rerun the records are read
  back (a torn last line, cut by the crash mid-write, is dropped) and only the items without one are done.
- A whole-set stage (clustering, deduplication, retrieval, filters) writes ``items.jsonl`` at once through a
  temporary file and a rename.
- ``stage.json`` (counts, seconds) is written last and atomically: a stage with it is finished and is read back,
  not run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from zoo.errors import DataError
from zoo.files import atomic_file


class StageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.items_path = directory / "items.jsonl"
        self.summary_path = directory / "stage.json"

    @property
    def finished(self) -> bool:
        return self.summary_path.is_file()

    def records(self) -> list[dict]:
        """The records written so far; a torn last line (no newline) is cut off the file."""
        if not self.items_path.is_file():
            return []
        data = self.items_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.items_path, "r+b") as f:
                f.truncate(len(complete))
        records = []
        # split at newlines only: str.splitlines would also cut at the Unicode line separators a text may hold
        for number, line in enumerate(complete.decode().split("\n")[:-1], start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{self.items_path}:{number}: not valid JSON (a damaged stage file)") from None
        return records

    def append(self, records: Iterable[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.items_path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def write(self, records: Iterable[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.items_path, "w") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def finish(self, summary: dict) -> None:
        with atomic_file(self.summary_path, "w") as f:
            json.dump(summary, f, indent=2)

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())
