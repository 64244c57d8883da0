"""TorchServe's ``VisionHandler``: images (raw bytes, base64 text or nested lists) in, a batch tensor out.

Transforms are torchvision's when torchvision imports; otherwise modelserve's Pillow/numpy equivalents, which follow
torchvision's rounding rules and give the same numbers.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
from abc import ABC
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modelserve.handler import BadInputError
from modelserve.vision import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

ImagePipeline = Callable[[Any], Any]


@functools.cache
def _torchvision_transforms() -> Any:
    try:
        from torchvision import transforms
    except Exception:  # not installed, or built for another torch (it then fails with a RuntimeError)
        return None
    return transforms


class _PillowPipeline:
    """torchvision's Resize(shorter side) / CenterCrop / ToTensor / Normalize, done with Pillow and numpy."""

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> torch.Tensor:
        if image.mode == "1":
            image = image.convert("L")
        return torch.from_numpy(self.transform(image))


def default_image_pipeline(
    resize: int | None = 256,
    crop: int | None = 224,
    mean: tuple[float, ...] | None = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> ImagePipeline:
    """The default handlers' transforms: resize, center-crop, to a float tensor, normalize (``mean=None``: no)."""
    transforms = _torchvision_transforms()
    if transforms is not None:
        steps: list[Any] = []
        if resize:
            steps.append(transforms.Resize(resize))
        if crop:
            steps.append(transforms.CenterCrop(crop))
        steps.append(transforms.ToTensor())
        if mean is not None:
            steps.append(transforms.Normalize(mean=list(mean), std=list(std)))
        return transforms.Compose(steps)  # type: ignore[no-any-return]
    return _PillowPipeline(
        ImageTransform(resize=resize, crop=crop, mean=mean or (0.0,), std=std, normalize=mean is not None)
    )


def open_image(raw: bytes) -> Any:
    """Decode an image with Pillow; an undecodable body is the client's error (400), not the handler's."""
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except UnidentifiedImageError:
        raise BadInputError("the body is not an image Pillow can decode (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"the image is truncated or corrupt: {exc}") from None
    return image


class VisionHandler(BaseHandler, ABC):
    """Base class of the image handlers; subclasses set ``image_processing`` (a callable: PIL image -> tensor)."""

    image_processing: ImagePipeline

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.ig: Any = None
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            pass  # explanations need captum; predictions do not
        else:
            self.ig = IntegratedGradients(self.model)
        self.initialized = True
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                try:
                    image = base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    raise BadInputError("the image string is not valid base64") from None
            if isinstance(image, (bytearray, bytes)):
                image = self.image_processing(open_image(bytes(image)))
            else:
                try:
                    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
                except (TypeError, ValueError):
                    raise BadInputError(
                        f"cannot read an image from a {type(image).__name__}: send image bytes, base64 text or "
                        "a nested list of numbers"
                    ) from None
            images.append(image)
        try:
            return torch.stack(images).to(self.device)
        except RuntimeError as exc:
            raise BadInputError(f"the images of the batch do not have one shape: {exc}") from None

    def get_insights(self, tensor_data: Any, _: Any, target: Any = 0) -> Any:
        if self.ig is None:
            raise RuntimeError("explanations of image models need captum: pip install captum")
        return self.ig.attribute(tensor_data, target=target, n_steps=15).tolist()
