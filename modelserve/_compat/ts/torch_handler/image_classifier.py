"""TorchServe's ``ImageClassifier``: an image in, the ``topk`` (5) ``{label: probability}`` out, labels from
``index_to_name.json``; ImageNet transforms (resize 256, center crop 224, normalize)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ts.handler_utils.timer import timed
from ts.torch_handler.vision_handler import ImagePipeline, VisionHandler, default_image_pipeline
from ts.utils.util import map_class_to_label


class ImageClassifier(VisionHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8
    topk = 5
    image_processing: ImagePipeline = default_image_pipeline()

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, min(self.topk, ps.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
