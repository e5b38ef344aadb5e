"""The one exception type for mistakes in what a user gave zoo (a setting, a file, a row, a name).

The CLI prints such an error as one line naming the key, file or row, and exits with status 2; anything else
is a bug and keeps its traceback. ``ZOO_DEBUG=1`` shows tracebacks for user errors too.
"""


class ZooError(Exception):
    pass


class ConfigError(ZooError, ValueError):
    """A setting that cannot work; the message names the key."""


class DataError(ZooError, ValueError):
    """Malformed or missing input data; the message names the file and row."""


class TrainingDiverged(ZooError):
    """A loss, gradient norm or weight that is no longer finite; the message names the step."""


def first_line(error: Exception) -> str:
    """The first line of an exception's message (a library's multi-line message, inside a one-line error)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


def require_int(key: str, value: object, minimum: int) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def config_section(cls, values: dict | None, key: str):
    """The settings dataclass ``cls`` built from ``values`` (None: its defaults); an unknown setting is an error
    naming it under ``key``."""
    from dataclasses import fields

    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {key} setting(s): {', '.join(unknown)}")
    return cls(**values)
