"""Test handler: tells the test which requests are in the handler, and holds them there until the test lets go.

With ``handler: {record_to: PATH, release_dir: DIR}`` in the model config it appends one line per batch to PATH, the
request ids of the batch separated by spaces, as soon as the batch arrives. A batch with a body ``hold:NAME`` then
waits until the file DIR/NAME exists (at most ``hold_max_s``, default 30 s, so a failed test cannot hang the server).
Tests use it to know, without timing, that a request is in the worker, or is not.
"""

import os
import time
from pathlib import Path
from typing import Any

from modelserve.handler import BaseHandler, Context


class GateHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        super().initialize(context)
        settings = context.model_yaml_config.get("handler", {})
        self.record_to = Path(settings["record_to"])
        self.release_dir = Path(settings["release_dir"])
        self.hold_max_s = float(settings.get("hold_max_s", 30.0))

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        ids = [str(context.get_request_id(i)) for i in range(len(data))]
        with self.record_to.open("a") as out:
            out.write(" ".join(ids) + "\n")
        bodies = [item.get("body") for item in data]
        holds = {bytes(b[5:]).decode() for b in bodies if isinstance(b, (bytes, bytearray)) and b.startswith(b"hold:")}
        deadline = time.monotonic() + self.hold_max_s
        while holds and time.monotonic() < deadline:
            holds = {name for name in holds if not (self.release_dir / name).exists()}
            time.sleep(0.01)
        return [{"batch_size": len(data), "request_id": request_id, "pid": os.getpid()} for request_id in ids]
