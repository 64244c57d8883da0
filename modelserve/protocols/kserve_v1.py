"""KServe's v1 protocol: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out (``{"explanations": ...}`` from
``:explain``), errors as ``{"error": ...}``."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from modelserve import safejson
from modelserve.batching.types import InferRequest, InferResult, Protocol
from modelserve.handler_errors import BadInputError
from modelserve.protocols.codec import JSON_TYPE, KServeCodec, ModelTarget, json_default
from modelserve.protocols.torchserve import decode_request


class KServeV1Codec(KServeCodec):
    protocol = Protocol.KSERVE_V1
    prefixes = ("/v1",)

    def decode(self, request: InferRequest) -> dict[str, Any]:
        item = decode_request(request.body, request.content_type)
        value = item["body"]
        if not isinstance(value, dict) or not isinstance(value.get("instances"), list):
            raise BadInputError('KServe v1 requests are JSON objects with an "instances" list')
        return item

    def encode_output(self, output: Any, item: dict[str, Any], model: ModelTarget) -> InferResult:
        body = safejson.dumps({"predictions": output}, default=json_default)
        return InferResult(status=200, content_type=JSON_TYPE, body=body)

    @staticmethod
    def explanations(result: InferResult) -> InferResult:
        """``:explain``'s answer: the worker's ``{"predictions": [...]}`` as ``{"explanations": [...]}``."""
        try:
            answer = json.loads(result.body)
        except ValueError:
            return result
        if not isinstance(answer, dict) or set(answer) != {"predictions"}:
            return result
        return replace(result, body=json.dumps({"explanations": answer["predictions"]}).encode())


CODEC = KServeV1Codec()
