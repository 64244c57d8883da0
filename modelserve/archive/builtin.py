"""Lookup of the built-in handlers shipped in ``handlers/`` (packaged as ``modelserve.builtin_handlers``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUILTIN_PACKAGE = "modelserve.builtin_handlers"


def builtin_handlers_dir() -> Path:
    """The directory holding the built-in handler sources, in a checkout or an installed wheel."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # running from a source checkout without installation
    return Path(__file__).resolve().parents[2] / "handlers"


def builtin_handler_names() -> list[str]:
    """Names usable with ``--handler NAME``."""
    directory = builtin_handlers_dir()
    return sorted(p.stem for p in directory.glob("*.py") if not p.stem.startswith("_"))


def builtin_handler_path(name: str) -> Path | None:
    """The source file of built-in handler ``name``, or None when there is no such built-in."""
    if not name.isidentifier() or name.startswith("_"):
        return None
    path = builtin_handlers_dir() / f"{name}.py"
    return path if path.is_file() else None
