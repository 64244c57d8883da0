"""The preprocessing every server in the comparison runs: Pillow decode, convert, resize, scale, normalize, NCHW."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# model name -> (Pillow mode, size, mean, std), as the reference README fixes them
SETTINGS = {
    "convnet": ("L", 28, 0.1302, 0.3069),
    "resnet18": ("RGB", 224, 0.45, 0.225),
}


def preprocess(raw: bytes, model: str) -> np.ndarray:
    """One image -> a float32 CHW array."""
    mode, size, mean, std = SETTINGS[model]
    with Image.open(io.BytesIO(raw)) as image:
        converted = image.convert(mode).resize((size, size))
    array = (np.asarray(converted, dtype=np.float32) / 255.0 - mean) / std
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
