"""The server's work directory (extracted archives, downloads), tied to the live server by a lock.

Each server makes a fresh ``modelserve-work-*`` directory in the temporary directory and holds an exclusive
``flock`` on a file inside it for as long as it runs. The kernel drops the lock when the process dies, however it
dies (``kill -9`` included), so a directory whose lock can be taken belongs to no live server: the next server to
start removes it. Directories of live servers (a second server on the same machine) stay locked and are left alone,
as are directories without a lock file, whose owner cannot be told.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("modelserve.server")

PREFIX = "modelserve-work-"
LOCK_NAME = ".modelserve.lock"


class WorkDir:
    """A fresh work directory, locked by this process until ``remove``."""

    def __init__(self, parent: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        # the lock is taken before anything else goes in, so a directory with content is never unlocked while alive
        self._fd: int | None = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        # blocking: another server's stale check may hold it for an instant (and leaves it alone: it is empty)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def remove(self) -> None:
        """Delete the directory, then let go of the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale(parent: Path | None = None, keep: Path | None = None) -> list[Path]:
    """Remove the work directories of servers that are gone (their lock is free); return what was removed."""
    root = Path(parent or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = [entry for entry in root.iterdir() if entry.name.startswith(PREFIX)]
    except OSError:
        return removed
    for entry in candidates:
        if entry != keep and not entry.is_symlink() and entry.is_dir() and _remove_if_stale(entry):
            removed.append(entry)
    if removed:
        log.info("removed %d work directories left by servers that are gone", len(removed))
    return removed


def _remove_if_stale(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file (an older server, or one being made right now): never guess
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # held: its server is alive
    try:
        # an empty file is a server between creating its lock file and locking it
        if not os.read(fd, 32).strip():
            return False
        shutil.rmtree(directory, ignore_errors=True)  # with the lock held: no server can take it meanwhile
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
