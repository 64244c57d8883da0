"""Work directories are locked by their server; only those of servers that are gone are removed."""

from __future__ import annotations

import os
from pathlib import Path

from modelserve.server.workdir import LOCK_NAME, PREFIX, WorkDir, remove_stale


def _dead_servers_dir(parent: Path) -> Path:
    """What a server killed with SIGKILL leaves: its directory, a lock file with its pid, nobody holding it."""
    path = parent / f"{PREFIX}dead"
    (path / "modelserve-abc" / "model").mkdir(parents=True)
    (path / LOCK_NAME).write_text("4242\n")
    return path


def test_a_work_dir_is_locked_while_its_server_lives(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    assert work.path.name.startswith(PREFIX)
    assert (work.path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert remove_stale(tmp_path) == []  # held by this process: a live server's, kept
    assert work.path.is_dir()
    work.remove()
    assert not work.path.exists()


def test_the_dirs_of_dead_servers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    live = WorkDir(tmp_path)
    dead = _dead_servers_dir(tmp_path)
    no_lock = tmp_path / f"{PREFIX}older"  # made by a server without locks: its owner cannot be told
    no_lock.mkdir()
    being_made = tmp_path / f"{PREFIX}new"  # a server between creating its lock file and locking it
    being_made.mkdir()
    (being_made / LOCK_NAME).write_text("")
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()
    assert remove_stale(tmp_path) == [dead]
    assert not dead.exists()
    assert live.path.is_dir() and no_lock.is_dir() and being_made.is_dir() and unrelated.is_dir()
    live.remove()
