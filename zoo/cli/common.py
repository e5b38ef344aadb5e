"""What every zoo command shares: the one-line error and the config groups."""

from __future__ import annotations

import os
import sys

CONFIG_MODULE = "zoo.configs"
GROUPS = (
    "model", "method", "module", "data", "rollout", "sampler", "trainer", "strategy", "logger", "experiment", "debug"
)  # fmt: skip


def fail(message: str, code: int = 2) -> None:
    print(f"zoo: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def user_error(error: Exception) -> None:
    if os.environ.get("ZOO_DEBUG"):
        raise error
    fail(str(error))
