"""Test handler that leaks: every request keeps 40 MB for good (what workerMemoryLimit is for)."""

from typing import Any

from modelserve.handler import BaseHandler, Context

CHUNK_BYTES = 40 << 20


class MemoryHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        self.kept: list[bytearray] = []

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        for _ in data:
            chunk = bytearray(CHUNK_BYTES)
            chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page, so that it counts in RSS
            self.kept.append(chunk)
        return [{"kept_mb": len(self.kept) * (CHUNK_BYTES >> 20)} for _ in data]
