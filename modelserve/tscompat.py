"""Making TorchServe's ``ts`` handler API importable by handlers, in worker processes only.

The package lives in ``modelserve/_compat/ts``, a directory that is not on ``sys.path``: the server's own code never
imports it, and ``import ts`` anywhere else fails as before. A worker calls ``expose_ts_package`` before it loads a
handler; when a real ``ts`` (TorchServe) is installed, that one is left to win.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TS_COMPAT_DIR = Path(__file__).resolve().parent / "_compat"


def expose_ts_package() -> bool:
    """Put the ``ts`` compatibility package on ``sys.path`` unless a ``ts`` is importable already.

    Returns True when ours is the one handlers will import.
    """
    if str(TS_COMPAT_DIR) in sys.path:
        return True
    if importlib.util.find_spec("ts") is not None:
        return False
    sys.path.append(str(TS_COMPAT_DIR))  # last: never shadows anything the model or the environment provides
    importlib.invalidate_caches()
    return True
