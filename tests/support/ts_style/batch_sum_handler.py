"""A batching handler: one result per request, in order, each telling the batch size it was part of (modelserve
sends a batch as soon as a worker is free, TorchServe waits up to maxBatchDelay for a full one)."""

import json
import time
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class BatchSumHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.context = context
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        values = []
        for row in data:
            payload: Any = row.get("data") or row.get("body")
            if isinstance(payload, (bytes, bytearray)):
                payload = json.loads(payload)
            values.append(payload["values"])
        return torch.tensor(values, dtype=torch.float64)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(0.3)  # a busy worker: requests arriving meanwhile queue, and go together in the next batch
        return data.sum(dim=1)

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return [{"sum": float(v), "batch": len(data)} for v in data]
