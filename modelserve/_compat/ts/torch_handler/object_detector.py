"""TorchServe's ``ObjectDetector``: for each image, the detections scoring at least ``threshold`` (0.5), each
``{label: [x1, y1, x2, y2], "score": s}``; the model returns torchvision-style dicts of boxes, labels and scores."""

from __future__ import annotations

from typing import Any

from ts.torch_handler.vision_handler import ImagePipeline, VisionHandler, default_image_pipeline
from ts.utils.util import map_class_to_label


class ObjectDetector(VisionHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    image_processing: ImagePipeline = default_image_pipeline(resize=None, crop=None, mean=None)
    threshold = 0.5

    def postprocess(self, data: Any) -> list[Any]:
        result = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes, labels, scores = (row[key][keep].tolist() for key in ("boxes", "labels", "scores"))
            detections = []
            for label, box, score in zip(labels, boxes, scores, strict=True):
                detection = map_class_to_label([[box]], self.mapping, [[label]])[0]
                detection["score"] = score
                detections.append(detection)
            result.append(detections)
        return result
