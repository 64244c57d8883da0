"""Test handler: reports the size of the batch each request was part of, after an optional pause.

With ``handler: {record_to: PATH}`` in the model config it appends every request id it handles to PATH, so tests
can prove which requests reached a worker.
"""

import time
from typing import Any

from modelserve.handler import BaseHandler, Context


class BatchSizeHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        super().initialize(context)
        settings = context.model_yaml_config.get("handler", {})
        self.pause_s = float(settings.get("pause_s", 0.0))
        self.record_to = settings.get("record_to")

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        ids = [context.get_request_id(i) for i in range(len(data))]
        if self.record_to:
            with open(self.record_to, "a") as out:
                out.writelines(f"{request_id}\n" for request_id in ids)
        time.sleep(self.pause_s)
        context.metrics.add_counter("batches", 1, {"kind": "test"}, "batches seen by the test handler")
        context.metrics.observe("batch_items", float(len(data)))
        return [{"batch_size": len(data), "request_id": request_id} for request_id in ids]
