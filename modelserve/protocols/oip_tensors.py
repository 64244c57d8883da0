"""Open Inference Protocol tensors, the numpy half of :mod:`modelserve.protocols.oip` (workers only): JSON and
binary requests to numpy, and back.

Requests reach handlers as ``{"inputs": {name: numpy array}}`` under ``data``; handlers return ``{name: array}`` (or one
array), which is encoded as the protocol's response, with the binary tensor data extension when asked for.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelserve import safejson
from modelserve.datatypes import BYTES, OIP_TO_NUMPY, oip_datatype
from modelserve.handler_errors import BadInputError

# the binary extension's header: the length of the JSON part of a body (request or response), tensors follow it
HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 32  # numpy 1.x's own limit (2.x allows 64); no model takes more


def _shape(value: Any, name: str, body_size: int) -> tuple[list[int], int]:
    """The shape and its element count; a shape no body of ``body_size`` bytes could fill is refused up front."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise BadInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(value) > MAX_DIMS:
        raise BadInputError(f"input {name!r}: 'shape' has {len(value)} dimensions, at most {MAX_DIMS} are supported")
    # every value takes at least one byte of the body (JSON or binary): a larger count (exact, no int64 wrap-around)
    # cannot be filled, and is refused before numpy sees it
    count = math.prod(value)
    if count > body_size:
        raise BadInputError(f"input {name!r}: 'shape' {value} needs {count} values, more than the request can carry")
    return value, count


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: 'parameters' must be an object")
    return value


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    elements = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInputError(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadInputError(f"input {name!r}: truncated BYTES element")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [x for item in data for x in _flatten(item)]
    return data if isinstance(data, list) else [data]


def _decode_tensor(spec: Any, binary: memoryview, offset: int, body_size: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadInputError("every input needs a 'name'")
    name = spec["name"]
    shape, count = _shape(spec.get("shape"), name, body_size)
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in OIP_TO_NUMPY):
        raise BadInputError(f"input {name!r}: unsupported datatype {datatype!r}")
    size = _parameters(spec.get("parameters"), f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise BadInputError(f"input {name!r}: binary_data_size {size} exceeds the binary data sent")
        raw = bytes(binary[offset : offset + size])
        offset += size
        if datatype == BYTES:
            elements = _bytes_elements(raw, name)
            array = np.empty(len(elements), dtype=object)
            array[:] = elements
        elif datatype in OIP_TO_NUMPY:
            dtype = OIP_TO_NUMPY[datatype]
            if len(raw) != count * dtype.itemsize:
                raise BadInputError(f"input {name!r}: {len(raw)} bytes do not hold {count} {datatype} values")
            array = np.frombuffer(raw, dtype=dtype)
        else:
            raise BadInputError(f"input {name!r}: unsupported datatype {datatype!r}")
    else:
        if "data" not in spec:
            raise BadInputError(f"input {name!r} has no 'data' and no binary_data_size")
        flat = _flatten(spec["data"])
        if datatype == BYTES:
            array = np.empty(len(flat), dtype=object)
            array[:] = [v.encode() if isinstance(v, str) else v for v in flat]
        elif datatype in OIP_TO_NUMPY:
            try:
                with np.errstate(over="raise", invalid="raise"):  # 1e9 as FP16: a 400, not a silent inf
                    array = np.asarray(flat, dtype=OIP_TO_NUMPY[datatype])
            except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
                raise BadInputError(f"input {name!r}: data is not {datatype}: {exc}") from None
        else:
            raise BadInputError(f"input {name!r}: unsupported datatype {datatype!r}")
    if array.size != count:
        raise BadInputError(f"input {name!r}: shape {shape} needs {count} values, got {array.size}")
    try:
        return name, array.reshape(shape), offset
    except ValueError as exc:  # numpy's own limits on a shape
        raise BadInputError(f"input {name!r}: 'shape' {shape} is not supported: {exc}") from None


def decode_request(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """An inference request (JSON, or JSON + binary tensors) -> the handler's data item."""
    header_length = headers.get(HEADER_LENGTH)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):
            raise BadInputError("Inference-Header-Content-Length must be a non-negative integer")
        json_length = int(header_length)
        if json_length > len(body):
            raise BadInputError("Inference-Header-Content-Length exceeds the body")
    else:
        json_length = len(body)
    try:
        request = safejson.loads(body[:json_length])
    except safejson.JSONInputError as exc:
        raise BadInputError(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise BadInputError("request needs a non-empty 'inputs' list")
    binary = memoryview(body)[json_length:]
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request["inputs"]:
        name, array, offset = _decode_tensor(spec, binary, offset, len(body))
        if name in inputs:
            raise BadInputError(f"input {name!r} is given twice")
        inputs[name] = array
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise BadInputError("'outputs' must be a list of objects with a 'name'")
    requested = [{"name": o["name"], "parameters": _parameters(o.get("parameters"), f"output {o['name']!r}")}
                 for o in outputs]  # fmt: skip
    oip = {
        "id": request.get("id"),
        "outputs": requested,
        "parameters": _parameters(request.get("parameters"), "request"),
    }
    return {"body": request, "data": {"inputs": inputs}, "oip": oip}


def _as_outputs(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The handler's result as named tensors, named as the model's metadata names its outputs.

    A dict keeps its keys when they are the metadata's names; else, when it has as many entries as the metadata has
    outputs, they are named in order (a handler that does not know the names answers ``output_0``, ...).
    """
    if isinstance(result, dict):
        arrays = [np.asarray(v) for v in result.values()]
        keys = [str(k) for k in result]
        if names and len(keys) == len(names) and set(keys) != set(names):
            keys = list(names)
        return dict(zip(keys, arrays, strict=True))
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, np.ndarray) for r in result):
        return {names[i] if i < len(names) else f"output_{i}": r for i, r in enumerate(result)}
    return {names[0] if names else "output_0": np.asarray(result)}


def _tensor_bytes(array: np.ndarray) -> bytes:
    if oip_datatype(array.dtype) == BYTES:
        parts = []
        for value in array.reshape(-1):
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if oip_datatype(array.dtype) == BYTES:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return list(flat.tolist())


def encode_response(
    result: Any, oip: dict[str, Any], model_name: str, model_version: str, output_names: Sequence[str]
) -> tuple[bytes, dict[str, str], str]:
    """The handler's outputs -> response body, extra headers and content type."""
    outputs = _as_outputs(result, output_names)
    requested = {o["name"]: o["parameters"] for o in oip["outputs"]}
    unknown = [name for name in requested if name not in outputs]
    if unknown:
        raise BadInputError(f"unknown output(s) requested: {', '.join(unknown)} (model has {', '.join(outputs)})")
    binary_default = bool(oip["parameters"].get("binary_data_output", False))
    selected = [name for name in outputs if not requested or name in requested]
    described = []
    blobs: list[bytes] = []
    for name in selected:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(array.dtype), "shape": list(array.shape)}
        if bool(requested.get(name, {}).get("binary_data", binary_default)):
            raw = _tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(array)
        described.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if oip.get("id") is not None:
        response["id"] = oip["id"]
    header = safejson.dumps(response, separators=(",", ":"))
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}, "application/octet-stream"
