"""Built-in ``object_detector``: images in, ``[{"label": [x1, y1, x2, y2], "score": s}, ...]`` out.

The model returns, per image, boxes, labels and scores as torchvision's detection models do (a list of dicts; a
TorchScript detection model's ``(losses, detections)`` tuple is accepted too). Images go in as float tensors in
[0, 1] without normalization (detection models normalize inside). Model config (``handler:``): ``threshold`` (0.5),
``grayscale``; labels from index_to_name.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelserve.handler import BaseHandler, Context
from modelserve.vision import ImageTransform, decode_image, load_labels, payload_bytes


class ObjectDetector(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    calls_model_through_run = True

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        config = self.handler_config
        self.transform = ImageTransform(
            resize=None, crop=None, normalize=False, grayscale=bool(config.get("grayscale"))
        )
        self.threshold = float(config.get("threshold", 0.5))
        self.labels = load_labels(Path(context.system_properties["model_dir"]) / "index_to_name.json")

    def preprocess_one(self, item: dict[str, Any]) -> np.ndarray:
        return self.transform(decode_image(payload_bytes(item), self.transform.mode))

    def collate(self, samples: list[Any]) -> list[np.ndarray]:
        return samples  # detection models take a list of images of any size

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        output = self.model.run(data)
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
            output = output[1]
        return output

    def postprocess(self, data: Any) -> list[Any]:
        results = []
        for detections in data:
            boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
            labels = np.asarray(detections["labels"]).reshape(-1)
            scores = np.asarray(detections["scores"], dtype=np.float64).reshape(-1)
            found = []
            for box, label, score in zip(boxes, labels, scores, strict=True):
                if score >= self.threshold:
                    name = self.labels.get(str(int(label)), str(int(label)))
                    found.append({name: [float(v) for v in box], "score": float(score)})
            results.append(found)
        return results
