"""Test handler for streamed Open Inference Protocol answers: input ``n`` (one integer) is answered by ``n`` pieces,
each an output ``y`` holding its index (INT64 [1]); with ``wait_for`` in the model config's ``handler`` section, the
handler waits after the first piece until that file exists (at most 30 s)."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class OipStreamHandler:
    def initialize(self, context: Any) -> None:
        settings = context.model_yaml_config.get("handler") or {}
        self.wait_for = Path(settings["wait_for"]) if "wait_for" in settings else None

    def _pieces(self, n: int) -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield {"y": np.array([i], dtype=np.int64)}
            if i == 0 and self.wait_for is not None:
                deadline = time.monotonic() + 30
                while not self.wait_for.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return [self._pieces(int(item["data"]["inputs"]["n"].reshape(-1)[0])) for item in data]
