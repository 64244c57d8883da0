"""Built-in ``image_classifier``: images in, top-k ``{"label": probability}`` out (TorchServe's output shape).

Model config (``handler:`` section of model-config.yaml): ``resize`` (256), ``crop`` (224), ``mean``/``std``
(ImageNet), ``grayscale`` (false), ``topk`` (5), ``labels`` (index_to_name.json). Accepts raw image bytes, a
multipart field, or base64 in JSON. Works with eager, TorchScript and ONNX models returning logits or log-probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelserve.handler import BaseHandler, Context
from modelserve.vision import ImageTransform, decode_image, load_labels, payload_bytes, softmax


class ImageClassifier(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        config = self.handler_config
        self.transform = ImageTransform.from_config(config)
        self.topk = int(config.get("topk", 5))
        model_dir = Path(context.system_properties["model_dir"])
        self.labels = load_labels(model_dir / str(config.get("labels", "index_to_name.json")))

    def preprocess_one(self, item: dict[str, Any]) -> np.ndarray:
        return self.transform(decode_image(payload_bytes(item), self.transform.mode))

    def collate(self, samples: list[Any]) -> np.ndarray:
        return np.stack(samples)

    def postprocess(self, data: Any) -> list[Any]:
        scores = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        probabilities = softmax(scores)
        k = max(1, min(self.topk, probabilities.shape[1]))
        results = []
        for row in probabilities:
            top = np.argsort(-row)[:k]
            results.append({self.labels.get(str(i), str(i)): float(row[i]) for i in top})
        return results
