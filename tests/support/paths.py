"""Where things are, for tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """A console script of the environment running the tests."""
    return str(BIN / name)
