"""Test handler: reports the size of the batch each request was part of, after an optional pause."""

import time
from typing import Any

from modelserve.handler import BaseHandler, Context


class BatchSizeHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        super().initialize(context)
        self.pause_s = float(context.model_yaml_config.get("handler", {}).get("pause_s", 0.0))

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        time.sleep(self.pause_s)
        context.metrics.add_counter("batches", 1, {"kind": "test"}, "batches seen by the test handler")
        context.metrics.observe("batch_items", float(len(data)))
        return [{"batch_size": len(data), "request_id": context.get_request_id(i)} for i in range(len(data))]
