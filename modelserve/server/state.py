"""What the three applications share: configuration, registry, model store, lifecycle flags."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from modelserve.config import ServerConfig
from modelserve.models.registry import ModelRegistry
from modelserve.models.store import ModelStore

log = logging.getLogger("modelserve.server")


@dataclass
class ServerState:
    config: ServerConfig
    registry: ModelRegistry
    store: ModelStore
    snapshot_path: Path | None
    draining: bool = False
    model_api_enabled: bool = False
    pending_loads: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)

    def save_snapshot(self) -> None:
        """Write the registry to the snapshot file atomically (when snapshots are on)."""
        if self.snapshot_path is None or self.draining:
            return
        data: dict[str, Any] = self.registry.snapshot()
        data["modelStore"] = str(self.store.root) if self.store.root else None
        path = self.snapshot_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".snapshot-", dir=path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2)
            os.replace(temp, path)
        except OSError as exc:
            log.error("cannot write snapshot %s: %s", path, exc)

    def load_snapshot(self) -> dict[str, Any] | None:
        if self.snapshot_path is None or not self.snapshot_path.is_file():
            return None
        try:
            data = json.loads(self.snapshot_path.read_text())
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable snapshot %s: %s", self.snapshot_path, exc)
            return None
        return data if isinstance(data, dict) else None


STATE = web.AppKey("state", ServerState)
