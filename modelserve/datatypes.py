"""The Open Inference Protocol's tensor datatypes and their numpy dtypes: the one table every side uses."""

from __future__ import annotations

import numpy as np

OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}  # fmt: skip
NUMPY_TO_OIP: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_TO_NUMPY.items()}
BYTES = "BYTES"
# names a model's own signature may use for text tensors (ONNX's tensor(string), numpy's str and bytes kinds)
_TEXT_NAMES = frozenset({"string", "str", "bytes", "object"})


def oip_datatype(dtype: np.dtype | str) -> str:
    """The OIP datatype of a numpy dtype or dtype name (text and objects are BYTES); ValueError if it has none."""
    if isinstance(dtype, str):
        if dtype in _TEXT_NAMES:
            return BYTES
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"{dtype!r} is not a numpy dtype") from None
    if dtype.kind in ("U", "S", "O"):
        return BYTES
    name = NUMPY_TO_OIP.get(dtype)
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a fixed-size OIP datatype; ValueError for BYTES or an unknown name."""
    dtype = OIP_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ValueError(f"{datatype!r} is not a fixed-size Open Inference Protocol datatype")
    return dtype
