"""The ``json`` envelope (TensorFlow Serving's REST shape): ``{"instances": [...]}`` per request, the instances of
the whole batch handled as one list, ``{"predictions": [...]}`` back per request. ``{"b64": ...}`` values are
decoded to bytes."""

from __future__ import annotations

from base64 import b64decode
from typing import Any

from modelserve import safejson
from modelserve.handler import BadInputError
from ts.torch_handler.request_envelope.base import BaseEnvelope, json_body


def _b64(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["b64"]:
        return b64decode(value["b64"])
    return value


class JSONEnvelope(BaseEnvelope):
    _lengths: list[int] = []

    def parse_input(self, data: Any) -> Any:
        batches = [self._from_json(row) for row in data]
        self._lengths = [len(rows) for rows in batches]
        return [row for rows in batches for row in rows]

    def format_output(self, data: Any) -> Any:
        outputs, cursor = [], 0
        for length in self._lengths:
            outputs.append(safejson.dumps({"predictions": data[cursor : cursor + length]}).decode())
            cursor += length
        return outputs

    def _from_json(self, data: Any) -> list[Any]:
        body = data.get("data") or data.get("body") or data
        if isinstance(body, (bytes, bytearray)):
            body = json_body(body)
        rows = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise BadInputError('the json envelope expects {"instances": [...]} with at least one instance')
        decoded = []
        for row in rows:
            if isinstance(row, dict) and list(row) != ["b64"]:
                decoded.append({column: _b64(value) for column, value in row.items()})
            else:
                decoded.append(_b64(row))
        return decoded
