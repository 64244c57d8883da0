"""Built-in ``image_segmenter``: images in, per-pixel ``[class, probability]`` out (TorchServe's output shape).

The model returns per-pixel class scores ``[N, C, H, W]``, or a dict with ``out`` as torchvision's segmentation models
do. Model config (``handler:``): ``resize`` (none), ``crop`` (none), ``mean``/``std`` (ImageNet), ``grayscale``.
With ``labels`` present (index_to_name.json), the response also lists the classes found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelserve.handler import BaseHandler, Context
from modelserve.vision import ImageTransform, decode_image, load_labels, payload_bytes, softmax


class ImageSegmenter(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    calls_model_through_run = True

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        config = self.handler_config
        self.transform = ImageTransform.from_config(config, resize=None, crop=None)
        self.labels = load_labels(Path(context.system_properties["model_dir"]) / "index_to_name.json")

    def preprocess_one(self, item: dict[str, Any]) -> np.ndarray:
        return self.transform(decode_image(payload_bytes(item), self.transform.mode))

    def collate(self, samples: list[Any]) -> Any:
        shapes = {s.shape for s in samples}
        if len(shapes) == 1:
            return np.stack(samples)
        return samples  # images of different sizes run one by one

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, list):
            return [self._scores(super(ImageSegmenter, self).inference(s[None]))[0] for s in data]
        return self._scores(super().inference(data))

    @staticmethod
    def _scores(output: Any) -> np.ndarray:
        if isinstance(output, dict):
            output = output["out"]
        return np.asarray(output, dtype=np.float32)

    def postprocess(self, data: Any) -> list[Any]:
        results = []
        for scores in data:  # [C, H, W]
            probabilities = softmax(np.moveaxis(scores, 0, -1))  # [H, W, C]
            classes = probabilities.argmax(axis=-1)
            best = probabilities.max(axis=-1)
            pixels = np.stack([classes.astype(np.float32), best], axis=-1)
            if self.labels:
                found = sorted({int(c) for c in np.unique(classes)})
                results.append(
                    {"mask": pixels.tolist(), "classes": {str(c): self.labels.get(str(c), str(c)) for c in found}}
                )
            else:
                results.append(pixels.tolist())
        return results
