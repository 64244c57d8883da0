"""The ``kserve`` envelope (KServe v1): ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out, or
``{"explanations": [...]}`` for explanation requests. Like TorchServe's, it reads the first request of a batch."""

from __future__ import annotations

from typing import Any

from modelserve.handler import BadInputError
from ts.torch_handler.request_envelope.base import BaseEnvelope, json_body


class KServeEnvelope(BaseEnvelope):
    def parse_input(self, data: Any) -> Any:
        self._data_list = [row.get("data") or row.get("body") for row in data]
        body = self._data_list[0]
        if isinstance(body, (bytes, bytearray)):
            body = json_body(body)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise BadInputError('KServe v1 requests are JSON objects with an "instances" list')
        self._inputs = body["instances"]
        return self._inputs

    def format_output(self, data: Any) -> Any:
        return [{"explanations" if self._is_explain() else "predictions": data}]
