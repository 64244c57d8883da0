"""A handler that answers with its own status code by raising PredictionException."""

import json
from typing import Any

from ts.utils.util import PredictionException


class PickyHandler:
    def initialize(self, context: Any) -> None:
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        results = []
        for row in data:
            payload: Any = row.get("data") or row.get("body")
            if isinstance(payload, (bytes, bytearray)):
                payload = json.loads(payload)
            if payload.get("fail"):
                raise PredictionException("the input asked for a failure", 513)
            results.append({"ok": True})
        return results
