"""A stage's output on disk, resumable: ``<workdir>/<NN>_<stage>/items.jsonl`` and ``stage.json``.

- An item-by-item stage (an LLM call per item) appends each finished batch of records to ``items.jsonl`` and
  flushes and fsyncs it, so a crash or Ctrl-C loses at most the batch in flight. On a rerun the records are read
  back (a torn last line, cut by the crash mid-write, is dropped) and only the items without one are done.
- A whole-set stage (clustering, deduplication, retrieval, filters) writes ``items.jsonl`` at once through a
  temporary file and a rename.
- ``stage.json`` (counts, seconds, and the line count and sha256 of ``items.jsonl``) is written last and
  atomically: a stage is finished, read back and not run again, only when its items verify against that record.
  A stage whose items are missing, cut or changed, or whose record is damaged, is not finished: it runs again
  (an LLM stage continues from the items it still has).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from zoo.errors import DataError
from zoo.io.files import atomic_file


class StageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.items_path = directory / "items.jsonl"
        self.summary_path = directory / "stage.json"

    @property
    def recorded(self) -> bool:
        """A record exists (finished or not)."""
        return self.summary_path.is_file()

    @property
    def finished(self) -> bool:
        """Recorded, and the items are those the record describes."""
        try:
            summary = json.loads(self.summary_path.read_bytes())
            data = self.items_path.read_bytes()
        except (OSError, ValueError):
            return False
        fingerprint = _fingerprint(data)
        return isinstance(summary, dict) and all(summary.get(k) == v for k, v in fingerprint.items())

    def records(self) -> list[dict]:
        """The records written so far; a torn last line (no newline) is cut off the file."""
        if not self.items_path.is_file():
            return []
        data = self.items_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.items_path, "r+b") as f:
                f.truncate(len(complete))
        try:
            text = complete.decode()
        except UnicodeDecodeError as e:
            raise DataError(
                f"{self.items_path}: not UTF-8 at byte {e.start} (a damaged stage file): delete it, or --restart"
            ) from None
        records = []
        # split at newlines only: str.splitlines would also cut at the Unicode line separators a text may hold
        for number, line in enumerate(text.split("\n")[:-1], start=1):
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
        """Record the stage as finished: ``summary`` and the fingerprint of its items."""
        data = self.items_path.read_bytes() if self.items_path.is_file() else b""
        with atomic_file(self.summary_path, "w") as f:
            json.dump({**summary, **_fingerprint(data)}, f, indent=2)

    def summary(self) -> dict:
        summary = json.loads(self.summary_path.read_text())
        return {k: v for k, v in summary.items() if k not in FINGERPRINT}


FINGERPRINT = ("records", "sha256")


def _fingerprint(items: bytes) -> dict:
    return {"records": items.count(b"\n"), "sha256": hashlib.sha256(items).hexdigest()}
