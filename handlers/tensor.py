"""Built-in ``tensor``: tensors in, the model's outputs as JSON out, for any TorchScript, eager or ONNX model.

A request carries one input (JSON nested list, ``{"data": [...]}``, or a ``.npy`` file) or several by name
(``{"inputs": {"name": [...], ...}}``). Each request is a batch along axis 0; a request with one dimension fewer than
the model expects is one sample. Requests in a batch are concatenated, run once, and split back. The response is the
output as a nested list, or ``{"output name": [...]}`` when the model has several outputs. Model config
(``handler:``): ``dtype`` (defaults to the model's input type, else float32).

The same handler serves the Open Inference Protocol (``/v2/models/{name}/infer``; tensors arrive as numpy arrays by
input name, outputs go back as typed tensors) and KServe v1 (``{"instances": [...]}``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from modelserve.handler import BadInputError, BaseHandler, Context

NPY_MAGIC = b"\x93NUMPY"


def _strings(value: Any) -> np.ndarray:
    """A string tensor as onnxruntime takes it: an object array of str."""
    array = np.asarray(value, dtype=object)
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.asarray(flat, dtype=object).reshape(array.shape)


class TensorHandler(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    calls_model_through_run = True

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        specs = self.model.inputs if self.model is not None else []
        self.input_names = [s.name for s in specs] or ["input"]
        self.dtypes = {s.name: self.handler_config.get("dtype", s.dtype) for s in specs}
        self.ranks = {s.name: len(s.shape) for s in specs if s.shape}
        self.shapes = {s.name: s.shape for s in specs if s.shape}
        if any(s.shape and s.shape[0] > 0 for s in specs):
            self.default_batch_size = 1  # a fixed batch dimension: rows of several requests cannot be stacked
        self.default_dtype = str(self.handler_config.get("dtype", "float32"))

    def _array(self, name: str, value: Any) -> tuple[np.ndarray, bool]:
        dtype = self.dtypes.get(name, self.default_dtype)
        try:
            if dtype == "string":
                array = _strings(value)
            else:
                array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=dtype)
                array = array.astype(dtype, copy=False)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInputError(f"input {name!r} is not a rectangular array of {dtype}: {exc}") from None
        if array.dtype == object and dtype != "string":
            raise BadInputError(f"input {name!r} is not a rectangular numeric array")
        rank = self.ranks.get(name)
        single = rank is not None and array.ndim == rank - 1
        if single:
            array = array[None]
        expected = self.shapes.get(name)
        if expected is not None:
            if array.ndim != len(expected):
                raise BadInputError(f"input {name!r} has shape {list(array.shape)}, the model expects {expected}")
            for got, want in zip(array.shape[1:], expected[1:], strict=True):
                if want > 0 and got != want:
                    raise BadInputError(f"input {name!r} has shape {list(array.shape)}, the model expects {expected}")
        return array, single

    def preprocess_one(self, item: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool, bool]:
        typed = "oip" in item  # Open Inference Protocol: shapes are explicit, outputs go back as typed tensors
        value = item.get("data", item.get("body"))
        if isinstance(value, (bytes, bytearray)):
            if bytes(value[:6]) == NPY_MAGIC:
                try:
                    value = np.load(io.BytesIO(bytes(value)), allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise BadInputError(f"cannot read the .npy body: {exc}") from None
            else:
                raise BadInputError("send a JSON array (Content-Type: application/json) or a .npy file")
        if isinstance(value, dict):
            value = value.get("inputs", value.get("data", value.get("instances")))
        if value is None:
            raise BadInputError('empty input: send a JSON array, {"inputs": {...}} or a .npy file')
        named = value if isinstance(value, dict) else {self.input_names[0]: value}
        if self.model is not None and self.model.feeds_by_name:
            missing = [n for n in self.input_names if n not in named]
            if missing:
                raise BadInputError(f"missing input(s): {', '.join(missing)}")
        arrays: dict[str, np.ndarray] = {}
        single = False
        for name, raw in named.items():
            arrays[name], single = self._array(name, raw)
        if any(a.ndim == 0 for a in arrays.values()):
            raise BadInputError("inputs must be arrays, not single numbers")
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1:
            raise BadInputError("all inputs of one request must have the same batch size")
        return arrays, single and not typed, typed

    def collate(self, samples: list[Any]) -> Any:
        self._rows = [next(iter(arrays.values())).shape[0] for arrays, _, _ in samples]
        self._singles = [single for _, single, _ in samples]
        self._typed = [typed for _, _, typed in samples]
        names = list(samples[0][0])
        try:
            return {n: np.concatenate([arrays[n] for arrays, _, _ in samples]) for n in names}
        except (ValueError, KeyError) as exc:
            raise BadInputError(f"requests in this batch have different shapes: {exc}") from None

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.model.run_named(data)

    def postprocess(self, data: Any) -> list[Any]:
        outputs = data if isinstance(data, (list, tuple)) else [data]  # a subclass's inference may return one array
        names = [s.name for s in self.model.outputs] or [f"output_{i}" for i in range(len(outputs))]
        results = []
        start = 0
        for rows, single, typed in zip(self._rows, self._singles, self._typed, strict=True):
            parts = [np.asarray(o)[start : start + rows] for o in outputs]
            if typed:
                start += rows
                results.append(dict(zip(names, parts, strict=False)))
                continue
            if single:
                parts = [p[0] for p in parts]
            start += rows
            if len(parts) == 1:
                results.append(parts[0].tolist())
            else:
                results.append({name: part.tolist() for name, part in zip(names, parts, strict=False)})
        return results
