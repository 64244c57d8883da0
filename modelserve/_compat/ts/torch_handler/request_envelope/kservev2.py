"""The ``kservev2`` envelope (Open Inference Protocol): ``inputs`` tensors in, ``outputs`` tensors out, each output
named after the input it came from. Like TorchServe's, it reads the first request of a batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelserve.datatypes import oip_datatype
from modelserve.handler import BadInputError
from ts.torch_handler.request_envelope.base import BaseEnvelope, json_body


def _datatype(array: np.ndarray) -> str:
    try:
        return oip_datatype(array.dtype)
    except ValueError:
        return "BYTES"  # what TorchServe's envelope calls anything else


class KServev2Envelope(BaseEnvelope):
    def parse_input(self, data: Any) -> Any:
        bodies = [row.get("data") or row.get("body") for row in data]
        body = bodies[0]
        if isinstance(body, (bytes, bytearray)):
            body = json_body(body)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise BadInputError('Open Inference Protocol requests are JSON objects with an "inputs" list')
        names = []
        for tensor in body["inputs"]:
            if not isinstance(tensor, dict) or "data" not in tensor:
                raise BadInputError("each input needs name, shape, datatype and data")
            if tensor.get("datatype") == "BYTES":
                tensor["data"] = tensor["data"][0]
            else:
                try:
                    tensor["data"] = np.array(tensor["data"]).reshape(tuple(tensor["shape"])).tolist()
                except (KeyError, TypeError, ValueError) as exc:
                    raise BadInputError(f"input {tensor.get('name')!r}: {exc}") from None
            names.append(tensor.get("name"))
        self._input_names = names
        request_id = body.get("id")
        self._request_id = request_id if isinstance(request_id, str) and request_id.strip() else None
        return body["inputs"]

    def format_output(self, data: Any) -> Any:
        model = self.context.manifest.get("model", {})
        outputs = []
        for index, item in enumerate(data):
            array = np.array(item).flatten()
            name = self._input_names[index] if index < len(self._input_names) else f"output-{index}"
            outputs.append({"name": name, "datatype": _datatype(array), "data": array.tolist(), "shape": [array.size]})
        response = {
            "id": self._request_id or self.context.get_request_id(0),
            "model_name": model.get("modelName"),
            "model_version": model.get("modelVersion"),
            "outputs": outputs,
        }
        return [response]
