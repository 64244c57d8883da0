"""TorchServe handler for the benchmark: the same preprocessing as modelserve's, as a BaseHandler subclass."""

import io

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

SETTINGS = {"convnet": ("L", 28, 0.1302, 0.3069), "resnet18": ("RGB", 224, 0.45, 0.225)}


class TopClass(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        self.kind = "resnet18" if "resnet" in context.manifest["model"]["modelName"] else "convnet"

    def preprocess(self, data):
        mode, size, mean, std = SETTINGS[self.kind]
        arrays = []
        for row in data:
            raw = row.get("data") or row.get("body")
            with Image.open(io.BytesIO(raw)) as image:
                converted = image.convert(mode).resize((size, size))
            array = (np.asarray(converted, dtype=np.float32) / 255.0 - mean) / std
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays))

    def postprocess(self, data):
        return [int(i) for i in data.argmax(dim=1)]
