"""TorchServe handler for W3: one JSON row of iris features per request, ONNX Runtime on one thread, the label and
class probabilities back (what modelserve's built-in ``onnx`` handler answers)."""

import json
import os

import numpy as np
import onnxruntime as ort
from ts.torch_handler.base_handler import BaseHandler


class Iris(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, "iris.onnx"), options)
        with open(os.path.join(model_dir, "feature_names.json")) as names:
            self.features = json.load(names)
        self.input_name = self.session.get_inputs()[0].name
        self.initialized = True

    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            value = body if isinstance(body, dict) else json.loads(body)
            rows.append([value[name] for name in self.features])
        return np.asarray(rows, dtype=np.float32)

    def inference(self, data, *args, **kwargs):
        return self.session.run(None, {self.input_name: data})

    def postprocess(self, data):
        labels, probabilities = data
        return [
            {"label": str(label), "probabilities": {str(k): float(v) for k, v in p.items()}}
            for label, p in zip(labels, probabilities, strict=True)
        ]
