"""TorchServe's ``ImageSegmenter``: for each image, per pixel the top class and its probability, ``[H][W][2]``
(the model returns a dict with ``out`` of shape ``[N, K, H, W]``, as torchvision's segmentation models do)."""

from __future__ import annotations

from typing import Any

import torch

from ts.torch_handler.vision_handler import ImagePipeline, VisionHandler, default_image_pipeline


class ImageSegmenter(VisionHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    image_processing: ImagePipeline = default_image_pipeline()

    def postprocess(self, data: Any) -> list[Any]:
        scores = data["out"] if isinstance(data, dict) else data
        best = torch.max(torch.nn.functional.softmax(scores, dim=1), dim=1)
        return torch.stack([best.indices.type(best.values.dtype), best.values], dim=3).tolist()
