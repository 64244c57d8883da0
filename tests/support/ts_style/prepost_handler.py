"""A BaseHandler subclass that overrides only preprocess and postprocess (plus get_insights for explanations)."""

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class PrePostHandler(BaseHandler):
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            payload: Any = row.get("data") or row.get("body")
            if isinstance(payload, (bytes, bytearray)):
                payload = json.loads(payload)
            rows.append(payload["pixels"])
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return [[round(p, 6) for p in row] for row in torch.softmax(data, dim=1).tolist()]

    def get_insights(self, tensor_data: torch.Tensor, _: Any, target: Any = 0) -> Any:
        inputs = tensor_data.clone().requires_grad_(True)
        with torch.enable_grad():
            self.model(inputs)[:, int(target)].sum().backward()
        assert inputs.grad is not None
        return [[round(float(v), 6) for v in row.flatten()[:4]] for row in inputs.grad]
