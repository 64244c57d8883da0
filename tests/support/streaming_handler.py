"""Test handler that answers with generators (streams); what each request does is in its JSON body.

``{"mode": "count", "n": N, "wait_for": PATH}``: yields ``piece i`` lines; after the first it waits until PATH exists
(at most 30 s). ``{"mode": "endless", "marker": PATH}``: yields forever; its ``finally`` creates PATH.
``{"mode": "big", "n": N, "size": S, "count_to": PATH}``: yields N pieces of S bytes, writing to PATH how many it
yielded so far. ``{"mode": "fail", "after": K}``: K pieces, then ValueError. ``{"mode": "json", "n": N}``: dict
pieces. ``{"mode": "plain"}``: a plain result (the worker's pid and the batch size).
``{"mode": "first_then", "wait_for": PATH}``: one piece, then waits for PATH, then a last piece. Any other body
(``hold:NAME`` with ``release_dir`` in the model config) is held until ``release_dir/NAME`` exists, then answered
plainly.
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _wait(path: Path, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _count(n: int, wait_for: Path) -> Iterator[str]:
    for i in range(n):
        yield f"piece {i}\n"
        if i == 0:
            _wait(wait_for)


def _endless(marker: Path) -> Iterator[bytes]:
    try:
        while True:
            yield b"tick\n"
    finally:
        marker.write_text("closed")


def _big(n: int, size: int, count_to: Path) -> Iterator[bytes]:
    chunk = b"x" * size
    for i in range(n):
        count_to.write_text(str(i + 1))
        yield chunk


def _fail(after: int) -> Iterator[str]:
    for i in range(after):
        yield f"p{i};"
    raise ValueError("broke mid-stream")


def _json(n: int) -> Iterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i}


def _first_then(wait_for: Path) -> Iterator[str]:
    yield "first;"
    _wait(wait_for)
    yield "last"


class StreamingHandler:
    def initialize(self, context: Any) -> None:
        settings = context.model_yaml_config.get("handler") or {}
        self.release_dir = Path(settings["release_dir"]) if "release_dir" in settings else None

    def _one(self, item: dict[str, Any], batch_size: int) -> Any:
        body = item.get("body")
        if isinstance(body, (bytes, bytearray)) and body.startswith(b"hold:") and self.release_dir is not None:
            _wait(self.release_dir / bytes(body[5:]).decode())
            return {"held": True, "pid": os.getpid(), "batch_size": batch_size}
        request = body if isinstance(body, dict) else json.loads(bytes(body or b"{}"))
        mode = request.get("mode")
        if mode == "count":
            return _count(int(request["n"]), Path(request["wait_for"]))
        if mode == "endless":
            return _endless(Path(request["marker"]))
        if mode == "big":
            return _big(int(request["n"]), int(request["size"]), Path(request["count_to"]))
        if mode == "fail":
            return _fail(int(request["after"]))
        if mode == "json":
            return _json(int(request["n"]))
        if mode == "first_then":
            return _first_then(Path(request["wait_for"]))
        return {"pid": os.getpid(), "batch_size": batch_size}

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return [self._one(item, len(data)) for item in data]
