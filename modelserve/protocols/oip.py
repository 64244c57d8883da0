"""The Open Inference Protocol (KServe v2, Triton's HTTP protocol): tensors as JSON or with the binary tensor data
extension, errors as ``{"error": ...}``.

The tensor work needs numpy, which only workers import: it lives in :mod:`modelserve.protocols.oip_tensors` (with the
binary extension's header), imported on first use, so the server process loads this codec without numpy.
"""

from __future__ import annotations

from typing import Any

from modelserve.batching.types import InferRequest, InferResult, Protocol
from modelserve.protocols.codec import KServeCodec, ModelTarget


class OIPCodec(KServeCodec):
    protocol = Protocol.OIP_V2
    prefixes = ("/v2",)  # the repository extension's routes on the management port too

    def decode(self, request: InferRequest) -> dict[str, Any]:
        from modelserve.protocols.oip_tensors import decode_request

        return decode_request(request.body, request.headers)

    def encode_output(self, output: Any, item: dict[str, Any], model: ModelTarget) -> InferResult:
        from modelserve.protocols.oip_tensors import encode_response

        body, headers, content_type = encode_response(
            output, item["oip"], model.name, model.version, model.output_names
        )
        return InferResult(status=200, content_type=content_type, headers=headers, body=body)


CODEC = OIPCodec()
