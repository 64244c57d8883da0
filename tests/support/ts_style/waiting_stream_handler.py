"""A ts-style handler that sends one intermediate part, then waits for the file its request names before it returns
its final result: a client that reads the part before the file exists proves the part was streamed."""

import json
import time
from pathlib import Path
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response


class WaitingStreamHandler:
    def initialize(self, context: Any) -> None:
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        send_intermediate_predict_response(
            [{"part": 0} for _ in data], context.request_ids, "Intermediate Prediction success", 200, context
        )
        body = data[0]["body"]
        wait_for = Path((body if isinstance(body, dict) else json.loads(bytes(body)))["wait_for"])
        deadline = time.monotonic() + 30
        while not wait_for.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return [{"final": True} for _ in data]
