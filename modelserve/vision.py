"""Image helpers for the built-in vision handlers: decoding request payloads and Pillow/numpy transforms."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserve import safejson
from modelserve.handler import BadInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 64_000_000  # refuse decompression bombs long before Pillow's own (warning) limit


def payload_bytes(item: dict[str, Any]) -> bytes:
    """The image bytes of one request: raw body, a multipart field, or base64 in JSON."""
    value: Any = item.get("data")
    if value is None:
        value = item.get("body")
    if isinstance(value, dict):
        for key in ("data", "image", "instances", "b64", "body"):
            if key in value:
                value = value[key]
                break
        else:
            raise BadInputError("JSON body has no 'data' or 'image' field with a base64 image")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
        if isinstance(value, dict):
            value = value.get("b64", value.get("data"))
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, bytes):
        if value[:1] in (b"{", b'"'):
            try:
                return payload_bytes({"data": safejson.loads(value)})
            except safejson.JSONInputError:  # not JSON (or nested too deep): the bytes of an image, or garbage
                pass
        if not value:
            raise BadInputError("empty request body: send an image")
        return value
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadInputError("the image string is not valid base64") from None
    raise BadInputError(f"cannot read an image from a {type(value).__name__} payload")


def decode_image(raw: bytes, mode: str) -> Any:
    """Decode and fully load an image with Pillow, converted to ``mode`` ("RGB" or "L")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadInputError(f"image of {width}x{height} pixels is too large")
            image.load()
            return image.convert(mode)
    except UnidentifiedImageError:
        raise BadInputError("the body is not an image Pillow can decode (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"the image is truncated or corrupt: {exc}") from None


@dataclass
class ImageTransform:
    """Resize (shorter side), center-crop, scale to [0, 1], normalize, HWC -> CHW."""

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grayscale: bool = False
    normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any], **defaults: Any) -> ImageTransform:
        merged = {**defaults, **{k: v for k, v in config.items() if k in cls.__dataclass_fields__}}
        if merged.get("grayscale") and "mean" not in config and "mean" not in defaults:
            merged["mean"], merged["std"] = (0.5,), (0.5,)
        for key in ("mean", "std"):
            if key in merged:
                merged[key] = tuple(float(v) for v in merged[key])
        return cls(**merged)

    @property
    def mode(self) -> str:
        return "L" if self.grayscale else "RGB"

    def __call__(self, image: Any) -> np.ndarray:
        if self.resize:
            image = resize_shorter_side(image, self.resize)
        if self.crop:
            image = center_crop(image, self.crop)
        array: Any = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        if self.normalize:
            array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def resize_shorter_side(image: Any, size: int) -> Any:
    """Scale so the shorter side is ``size`` (bilinear); the longer side is truncated, as torchvision's Resize does."""
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return image
    new_long = max(1, int(size * long / short))
    target = (size, new_long) if width <= height else (new_long, size)
    return image.resize(target, Image.Resampling.BILINEAR)


def center_crop(image: Any, size: int) -> Any:
    """A ``size`` x ``size`` crop from the center, offsets rounded and small images zero-padded, as torchvision's."""
    width, height = image.size

    def offset(length: int) -> int:
        return round((length - size) / 2) if length >= size else -((size - length) // 2)

    left, top = offset(width), offset(height)
    return image.crop((left, top, left + size, top + size))


def load_labels(path: Any) -> dict[str, str]:
    """``index_to_name.json`` as TorchServe writes it: {"0": "cat"} or {"0": ["n0123", "cat"]}."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        return {}
    data = json.loads(file.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{file.name} must map class indices to names")
    return {str(k): str(v[-1]) if isinstance(v, list) else str(v) for k, v in data.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))
