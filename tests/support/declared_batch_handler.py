"""Test handler that declares a default batch size of 4 (``default_batch_size``), holds a batch whose body is
``hold:NAME`` until the file DIR/NAME exists (``handler: {release_dir: DIR}``), and fails every batch of more than
one request when ``handler: {fixed_batch: true}`` (a model exported with a batch dimension of 1).

Each result reports the batch size it was part of and the batch size the context announced.
"""

import time
from pathlib import Path
from typing import Any

from modelserve.handler import BaseHandler, Context


class DeclaredBatchHandler(BaseHandler):
    default_batch_size = 4

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        settings = context.model_yaml_config.get("handler", {})
        self.release_dir = Path(settings.get("release_dir", "."))
        self.fixed_batch = bool(settings.get("fixed_batch", False))
        self.record_to = settings.get("record_to")

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        if self.record_to:
            with open(self.record_to, "a") as out:
                out.write(f"{len(data)}\n")
        bodies = [bytes(item.get("body") or b"") for item in data]
        if self.fixed_batch and len(data) > 1:
            raise RuntimeError(f"expected a batch of 1, got {len(data)}")
        if any(b == b"broken" for b in bodies):
            raise RuntimeError("this request breaks the model")
        holds = {b[5:].decode() for b in bodies if b.startswith(b"hold:")}
        deadline = time.monotonic() + 30.0
        while holds and time.monotonic() < deadline:
            holds = {name for name in holds if not (self.release_dir / name).exists()}
            time.sleep(0.01)
        announced = context.system_properties["batch_size"]
        return [{"batch_size": len(data), "announced": announced, "body": b.decode()} for b in bodies]
