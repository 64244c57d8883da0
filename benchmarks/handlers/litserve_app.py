"""LitServe server for the benchmark: one model per server, WORKERS workers x 1 torch thread, batches of up to
MAX_BATCH within TIMEOUT_S, the image as base64 in JSON (KIND iris: one JSON row of features, ONNX Runtime on one
thread, with feature_names.json beside MODEL). The benchmark passes either the per-model settings every server gets,
or LitServe's idiomatic setup (2 workers, batches of 8 within 5 ms, as BENCHMARKS.md describes).

    python litserve_app.py MODEL.pt KIND PORT WORKERS MAX_BATCH TIMEOUT_S
"""

import base64
import io
import json
import os
import sys

import litserve as ls
import numpy as np
import torch
from PIL import Image

SETTINGS = {"convnet": ("L", 28, 0.1302, 0.3069), "resnet18": ("RGB", 224, 0.45, 0.225)}


class TopClassAPI(ls.LitAPI):
    def __init__(self, path, kind):
        super().__init__()
        self.path = path
        self.kind = kind

    def setup(self, device):
        torch.set_num_threads(1)
        self.model = torch.jit.load(self.path).eval()

    def decode_request(self, request):
        mode, size, mean, std = SETTINGS[self.kind]
        with Image.open(io.BytesIO(base64.b64decode(request["image"]))) as image:
            converted = image.convert(mode).resize((size, size))
        array = (np.asarray(converted, dtype=np.float32) / 255.0 - mean) / std
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def batch(self, inputs):
        return torch.from_numpy(np.stack(inputs))

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def unbatch(self, output):
        return [int(i) for i in output.argmax(dim=1)]

    def encode_response(self, output):
        return {"class": output}


class IrisAPI(ls.LitAPI):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def setup(self, device):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options)
        with open(os.path.join(os.path.dirname(self.path), "feature_names.json")) as names:
            self.features = json.load(names)
        self.input_name = self.session.get_inputs()[0].name

    def decode_request(self, request):
        return [request[name] for name in self.features]

    def batch(self, inputs):
        return np.asarray(inputs, dtype=np.float32)

    def predict(self, x):
        # a batch (MAX_BATCH > 1) or one row: the answer is a list with one dict per row either way
        labels, probabilities = self.session.run(
            None, {self.input_name: np.asarray(x, dtype=np.float32).reshape(-1, 4)}
        )
        return [
            {"label": str(label), "probabilities": {str(k): float(v) for k, v in p.items()}}
            for label, p in zip(labels, probabilities, strict=True)
        ]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output if isinstance(output, dict) else output[0]


if __name__ == "__main__":
    api = IrisAPI(sys.argv[1]) if sys.argv[2] == "iris" else TopClassAPI(sys.argv[1], sys.argv[2])
    workers, max_batch, timeout_s = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=workers, max_batch_size=max_batch, batch_timeout=timeout_s
    )
    server.run(port=int(sys.argv[3]), generate_client_file=False)
