"""MLServer custom runtime for the gRPC benchmark: an ONNX model run by ONNX Runtime (MLServer 1.x ships no ONNX
runtime; a custom ``MLModel`` is its documented way to serve one).

``model-settings.json``: ``parameters.uri`` is the .onnx file, ``parameters.extra.intra_op_threads`` ONNX Runtime's
intra-op threads (the benchmark gives it modelserve's thread count). Inputs are decoded and outputs encoded with
MLServer's own NumPy codec, as its custom-runtime guide does; adaptive batching (``max_batch_size``,
``max_batch_time``) stacks requests along the first dimension before ``predict``.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        parameters = self._settings.parameters
        extra: dict[str, Any] = (parameters.extra if parameters is not None else None) or {}
        options = ort.SessionOptions()
        threads = int(extra.get("intra_op_threads", 0))
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(uri, sess_options=options, providers=["CPUExecutionProvider"])
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {request_input.name: self.decode(request_input, default_codec=NumpyCodec)
                 for request_input in payload.inputs}  # fmt: skip
        values = self._session.run(None, feeds)
        outputs = [
            NumpyCodec.encode_output(name, value) for name, value in zip(self._output_names, values, strict=True)
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs)
