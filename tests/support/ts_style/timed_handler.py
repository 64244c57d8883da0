"""A BaseHandler subclass whose steps are decorated with ``timed`` (profiled when model-config.yaml says so)."""

import json
from typing import Any

import torch
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler


class TimedHandler(BaseHandler):
    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            payload: Any = row.get("data") or row.get("body")
            if isinstance(payload, (bytes, bytearray)):
                payload = json.loads(payload)
            rows.append(payload["pixels"])
        return torch.tensor(rows, dtype=torch.float32)

    @timed
    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return [int(i) for i in torch.argmax(data, dim=1)]
