"""modelserve handler for the benchmark: the shared preprocessing, a TorchScript forward pass, the top class."""

from __future__ import annotations

from typing import Any

import numpy as np
from preprocess import preprocess

from modelserve.handler import BadInputError, BaseHandler, Context


class TopClass(BaseHandler):
    # written for batches, so it says so (as the built-in image_classifier does): without a batchSize in the archive
    # modelserve batches up to 8; a handler that does not declare it runs batch 1, as TorchServe runs every handler
    default_batch_size = 8

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        # from the model's name, as the TorchServe handler does: archives without a model-config.yaml work too
        self.model_kind = "resnet18" if "resnet" in context.model_name else "convnet"

    def preprocess_one(self, item: dict[str, Any]) -> np.ndarray:
        body = item.get("body")
        if not isinstance(body, (bytes, bytearray)) or not body:
            raise BadInputError("send an image")
        try:
            return preprocess(bytes(body), self.model_kind)
        except OSError as exc:
            raise BadInputError(f"not an image: {exc}") from None

    def collate(self, samples: list[Any]) -> np.ndarray:
        return np.stack(samples)

    def postprocess(self, data: Any) -> list[Any]:
        return [int(i) for i in np.asarray(data).argmax(axis=1)]
