"""One set of rules for what users name and number, applied wherever a value enters the server.

The management API, the OIP repository extension, ``--models``, the ``models`` configuration key, snapshots and
every archive's manifest and ``model-config.yaml`` go through these functions, so a value refused on one path is
refused on all of them with the same message. Each error names the field and says what would be accepted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath

from modelserve.errors import InvalidRequestError

# the archiver's rule for model names; versions follow it too (no '/', no '..', no control or bidi characters)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
MAX_NAME_LENGTH = 255

# sane maxima for numeric settings: far beyond any real model, small enough that no setting exhausts the machine
MAX_BATCH_SIZE = 4096
MAX_BATCH_DELAY_MS = 3_600_000.0  # one hour
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # one week
MAX_JOB_QUEUE_SIZE = 1_000_000
MAX_THREADS = 1024
MAX_WORKERS = 10_000  # a hard ceiling; the server's max_workers_total is the real cap

_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")
_ASCII_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT](?:iB|B)?|B)?", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
# the handler names a worker resolves without a file of the archive: modelserve's built-ins, TorchServe's defaults
_BARE_HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InvalidValueError(InvalidRequestError, ValueError):
    """A value refused by these rules: a 400 on the HTTP APIs, a configuration error at start-up."""


def _shown(value: object) -> str:
    """A value as JSON (ASCII only: a newline or a bidi control cannot reach a log line or a message as itself)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _prefix(field: str) -> str:
    return f"{field}: " if field else ""


def check_name(value: object, field: str = "model_name") -> str:
    """A model name (or version): the archiver's ``^[A-Za-z0-9][A-Za-z0-9_\\-.]*$``, at most 255 characters."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or len(value) > MAX_NAME_LENGTH:
        raise InvalidValueError(
            f"invalid {field} {_shown(value)}: it must match ^{NAME_PATTERN.pattern}$ (letters, digits, '_', '-', "
            f"'.', starting with a letter or digit, at most {MAX_NAME_LENGTH} characters)"
        )
    return value


def check_version(value: object, field: str = "modelVersion") -> str:
    """A model version: the same characters as a name (it becomes part of paths, labels and log lines)."""
    return check_name(value, field)


def looks_numeric(raw: str) -> bool:
    """Whether a string was meant as a number (it holds a digit of any script): then it must be a valid one."""
    return any(char.isdigit() for char in raw)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(number: float, field: str, minimum: float, maximum: float) -> None:
    if number < minimum:
        raise InvalidValueError(f"{_prefix(field)}must be at least {_number(minimum)}, got {_number(number)}")
    if number > maximum:
        raise InvalidValueError(f"{_prefix(field)}must be at most {_number(maximum)}, got {_number(number)}")


def parse_int(value: object, field: str, minimum: int, maximum: int) -> int:
    """An integer from JSON, YAML or text: ASCII digits only (no full-width digits, no ``1e3``), in range.

    ``field`` names the value in the message ("" when the caller names it).
    """
    if isinstance(value, str):
        text = value.strip()
        if not _ASCII_INTEGER.fullmatch(text) or len(text) > 20:
            digits = " in ASCII digits" if looks_numeric(text) else ""
            raise InvalidValueError(f"{_prefix(field)}expected an integer{digits}, got {_shown(value)}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(f"{_prefix(field)}expected an integer, got {_shown(value)}")
    _in_range(value, field, minimum, maximum)
    return value


def parse_float(value: object, field: str, minimum: float, maximum: float) -> float:
    """A finite number (no inf, nan or overflow such as ``1e309``) in range; text in ASCII digits only."""
    if isinstance(value, str):
        text = value.strip()
        if not _ASCII_DECIMAL.fullmatch(text) or len(text) > 40:
            digits = " in ASCII digits" if looks_numeric(text) else ""
            raise InvalidValueError(f"{_prefix(field)}expected a number{digits}, got {_shown(value)}")
        value = float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValueError(f"{_prefix(field)}expected a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidValueError(f"{_prefix(field)}is too large, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise InvalidValueError(f"{_prefix(field)}expected a finite number, got {_shown(value)}")
    _in_range(number, field, minimum, maximum)
    return number


def parse_memory(value: object, field: str) -> int:
    """A size in bytes: an integer, or text such as ``512MB``, ``1.5GiB``, ``800M`` (K/M/G/T alone are binary)."""
    if isinstance(value, bool):
        raise InvalidValueError(f"{_prefix(field)}expected a size such as 512MB, got {_shown(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _MEMORY.fullmatch(value.strip())):
        amount, unit = match.groups()
        number = int(float(amount) * _MEMORY_UNITS[(unit or "").lower()])
    else:
        raise InvalidValueError(f"{_prefix(field)}expected a size in bytes, or such as 512MB, got {_shown(value)}")
    if not 1 <= number <= 1 << 50:
        raise InvalidValueError(f"{_prefix(field)}must be a positive size of at most 1 PiB, got {_shown(value)}")
    return number


def check_handler(handler: str, archive_root: Path, field: str = "handler") -> str:
    """A handler reference names a file inside the archive (``x.py``, ``x.py:fn``, ``dir/x.py``) or a bare name.

    A bare name (``image_classifier``, ``my_handler``) resolves to a file of the archive, a TorchServe default or a
    built-in, never to anything else on the server's disk. Paths are checked without following what they name out of
    the archive: absolute paths, ``..``, backslashes and links that leave the archive are refused.
    """
    module, sep, function = handler.partition(":")
    if sep and not function.isidentifier():
        raise InvalidValueError(f"invalid {field} {_shown(handler)}: {function!r} is not a Python function name")
    if _BARE_HANDLER.fullmatch(module):
        return handler
    bad = "\x00" in module or "\\" in module or module.startswith("/") or not module.endswith(".py")
    path = PurePosixPath(module)
    if bad or any(part in ("..", "") for part in module.split("/")):
        raise InvalidValueError(
            f"invalid {field} {_shown(handler)}: a handler is a built-in name or a .py file inside the archive "
            "(a relative path such as handler.py or handler.py:function)"
        )
    root = archive_root.resolve()
    target = (archive_root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise InvalidValueError(f"invalid {field} {_shown(handler)}: the archive contains no file {module!r}")
    return handler
