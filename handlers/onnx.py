"""Built-in ``onnx``: tabular rows in, labels and probabilities out, for classifiers exported by skl2onnx.

A request is one row (a list of features, or a dict of feature name -> value) or several (a list of rows, or
``{"instances": [...]}``). Dict rows need the feature order: ``feature_names`` in the ``handler:`` section of
model-config.yaml, or a ``feature_names.json`` file in the archive. One row gives ``{"label": ..., "probabilities":
{class: p}}``; several rows give a list of those. Regressors (a single output) give ``{"prediction": value}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelserve.datatypes import oip_datatype
from modelserve.handler import BadInputError, BaseHandler, Context
from modelserve.runtimes.onnx import OnnxRuntime


class OnnxTabular(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        if not isinstance(self.model, OnnxRuntime):
            raise ValueError("the onnx handler needs an .onnx serialized file")
        config = self.handler_config
        names = config.get("feature_names")
        names_file = Path(context.system_properties["model_dir"]) / "feature_names.json"
        if names is None and names_file.is_file():
            names = json.loads(names_file.read_text())
        self.feature_names: list[str] | None = [str(n) for n in names] if names else None
        spec = self.model.inputs[0]
        if len(self.model.inputs) != 1 or len(spec.shape) != 2:
            shapes = ", ".join(f"{i.name} {list(i.shape)}" for i in self.model.inputs)
            raise ValueError(
                f"the onnx handler serves tabular models, one input of shape [rows, features]; this model takes "
                f"{shapes}: use the tensor handler (--handler tensor) for it"
            )
        self.input_name = spec.name
        self.dtype = np.dtype(spec.dtype if spec.dtype in ("float32", "float64", "int64") else "float32")
        self.width = spec.shape[1] if len(spec.shape) == 2 and spec.shape[1] > 0 else None
        if spec.shape and spec.shape[0] > 0:
            self.default_batch_size = 1  # a fixed batch dimension: rows of several requests cannot be stacked

    def signature(self) -> dict[str, Any]:
        """Inputs and outputs as the Open Inference Protocol sees them (probabilities as [rows, classes])."""
        spec = self.model.inputs[0]
        outputs = self.model.outputs
        probe = self.model.run_named({self.input_name: np.zeros((1, self.width or 1), dtype=self.dtype)})
        label = np.asarray(probe[0])
        described = [{"name": outputs[0].name, "datatype": oip_datatype(label.dtype), "shape": [-1]}]
        if len(probe) > 1:
            first = probe[1][0]
            classes = len(first) if isinstance(first, dict) else int(np.asarray(first).size)
            described.append({"name": outputs[1].name, "datatype": "FP32", "shape": [-1, classes]})
        inputs = [{"name": spec.name, "datatype": oip_datatype(self.dtype), "shape": spec.shape}]
        return {"inputs": inputs, "outputs": described}

    def _row(self, row: Any) -> list[Any]:
        if isinstance(row, dict):
            if self.feature_names is None:
                raise BadInputError("rows given as objects need feature_names in the model configuration")
            missing = [n for n in self.feature_names if n not in row]
            if missing:
                raise BadInputError(f"row is missing feature(s): {', '.join(missing)}")
            return [row[n] for n in self.feature_names]
        if isinstance(row, list):
            return row
        raise BadInputError(f"a row must be a list of features or an object, not {type(row).__name__}")

    def preprocess_one(self, item: dict[str, Any]) -> tuple[np.ndarray, bool, bool]:
        if "oip" in item:  # Open Inference Protocol: one [N, features] tensor; answered with tensors
            arrays = list(item["data"]["inputs"].values())
            if len(arrays) != 1 or arrays[0].ndim != 2:
                raise BadInputError("send one input tensor of shape [rows, features]")
            try:
                array = arrays[0].astype(self.dtype, copy=False)
            except (ValueError, TypeError):
                raise BadInputError(f"the input tensor must hold numbers ({self.dtype})") from None
            return self._check(array), False, True
        value = item.get("data", item.get("body"))
        if isinstance(value, (bytes, bytearray)):
            raise BadInputError("send JSON rows (Content-Type: application/json)")
        if isinstance(value, dict) and ("instances" in value or "inputs" in value or "data" in value):
            value = value.get("instances", value.get("inputs", value.get("data")))
        if value is None or value == []:
            raise BadInputError("empty input: send a row or a list of rows")
        single = isinstance(value, dict) or (isinstance(value, list) and not isinstance(value[0], (list, dict)))
        rows = [self._row(value)] if single else [self._row(r) for r in value]
        try:
            array = np.asarray(rows, dtype=self.dtype)
        except (ValueError, TypeError) as exc:
            raise BadInputError(f"rows must hold numbers of equal length: {exc}") from None
        return self._check(array), single, False

    def _check(self, array: np.ndarray) -> np.ndarray:
        if array.ndim != 2:
            raise BadInputError("rows must be flat lists of numbers")
        if self.width is not None and array.shape[1] != self.width:
            raise BadInputError(f"each row needs {self.width} features, got {array.shape[1]}")
        return array

    def collate(self, samples: list[Any]) -> np.ndarray:
        self._rows = [(len(array), single, typed) for array, single, typed in samples]
        return np.concatenate([array for array, _, _ in samples])

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.model.run_named({self.input_name: data})

    def _row_result(self, outputs: list[Any], index: int) -> dict[str, Any]:
        if len(outputs) == 1:
            value = np.asarray(outputs[0])[index]
            return {"prediction": value.tolist()}
        label = np.asarray(outputs[0])[index]
        probabilities = outputs[1][index]
        if isinstance(probabilities, dict):  # skl2onnx's ZipMap output
            mapped = {str(k): float(v) for k, v in probabilities.items()}
        else:
            mapped = {str(i): float(p) for i, p in enumerate(np.asarray(probabilities).reshape(-1))}
        return {"label": label.item() if hasattr(label, "item") else label, "probabilities": mapped}

    def _typed_result(self, outputs: list[Any], start: int, count: int) -> dict[str, np.ndarray]:
        """Tensors for the Open Inference Protocol: labels, and probabilities as [rows, classes]."""
        names = [spec.name for spec in self.model.outputs]
        result = {names[0]: np.asarray(outputs[0])[start : start + count]}
        if len(outputs) > 1:
            rows = outputs[1][start : start + count]
            if rows and isinstance(rows[0], dict):
                classes = list(rows[0])
                result[names[1]] = np.asarray([[row[c] for c in classes] for row in rows], dtype=np.float32)
            else:
                result[names[1]] = np.asarray(rows, dtype=np.float32)
        return result

    def postprocess(self, data: Any) -> list[Any]:
        results: list[Any] = []
        start = 0
        for count, single, typed in self._rows:
            if typed:
                results.append(self._typed_result(data, start, count))
            else:
                rows = [self._row_result(data, start + i) for i in range(count)]
                results.append(rows[0] if single else rows)
            start += count
        return results
