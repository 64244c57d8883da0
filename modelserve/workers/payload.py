"""Request bodies into the handler's ``data`` dicts, and handler outputs into response bytes (worker side).

Every parser here takes untrusted bytes: JSON goes through :mod:`modelserve.safejson` (nesting limit), multipart
through python-multipart (a streaming parser made for HTTP forms, at most :data:`MAX_PARTS` parts), and a body that
does not decode raises BadInputError. JSON results are written by :func:`modelserve.safejson.dumps`: NaN and
infinities become ``null``, so a response body is always valid JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from modelserve import safejson
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, InferResult, Protocol
from modelserve.handler import BadInputError, ResponseInfo

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

JSON_TYPE = "application/json"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


MAX_PARTS = 1000  # a form with more parts is an attack on the worker's CPU, not a request
MAX_BOUNDARY_LENGTH = 70  # RFC 2046


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class _MultipartCollector:
    """python-multipart's callbacks, collecting parts (headers and data) and counting them."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self._field: list[bytes] = []
        self._value: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_part_data": lambda data, start, end: self.parts[-1].chunks.append(data[start:end]),
            "on_header_field": lambda data, start, end: self._field.append(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.append(data[start:end]),
            "on_header_end": self._header_end,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadInputError(f"multipart body has more than {MAX_PARTS} parts")
        self.parts.append(_Part())

    def _header_end(self) -> None:
        self.parts[-1].headers[b"".join(self._field).strip().lower()] = b"".join(self._value).strip()
        self._field.clear()
        self._value.clear()


def _boundary(content_type: str) -> bytes:
    # the header as bytes read as latin-1, which the parameter parser expects (a header may carry any code point)
    _, options = parse_options_header(content_type.encode("utf-8", "surrogatepass").decode("latin-1"))
    boundary = options.get(b"boundary", b"")
    # RFC 2046: 1 to 70 characters from a 7-bit set; a header may carry anything, so check before using it
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH or not all(32 <= c < 127 for c in boundary):
        raise BadInputError(
            f"multipart/form-data needs a boundary of 1 to {MAX_BOUNDARY_LENGTH} printable ASCII characters"
        )
    return boundary


def _parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """Form fields by name (the last of a repeated name wins): files as bytes, other fields as str when UTF-8."""
    collector = _MultipartCollector()
    parser = MultipartParser(_boundary(content_type), collector.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadInputError(f"malformed multipart body: {exc}") from None
    if parser.state != MultipartState.END:
        raise BadInputError("malformed multipart body: it ends before its closing boundary")
    fields: dict[str, Any] = {}
    for part in collector.parts:
        disposition, options = parse_options_header(part.headers.get(b"content-disposition", b"").decode("latin-1"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise BadInputError('every multipart part needs Content-Disposition: form-data; name="..."')
        raw = b"".join(part.chunks)
        fields[name.decode("utf-8", "replace")] = raw if b"filename" in options else _maybe_text(raw)
    if not fields:
        raise BadInputError("multipart body has no fields")
    return fields


def _maybe_text(raw: bytes) -> Any:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def decode_request(body: bytes, content_type: str) -> dict[str, Any]:
    """The ``data`` dict TorchServe handlers expect: the payload under ``body`` and ``data``, form fields by name."""
    media = _media_type(content_type)
    if media == JSON_TYPE or media.endswith("+json"):
        try:
            value: Any = safejson.loads(body) if body else None
        except safejson.JSONInputError as exc:
            raise BadInputError(f"request body is not valid JSON: {exc}") from None
        return {"body": value, "data": value}
    if media == "multipart/form-data":
        fields = _parse_multipart(body, content_type)
        first = next(iter(fields.values()))
        return {"body": first, "data": first, **fields}
    if media == FORM_TYPE:
        form = parse_form(body)
        if form is not None:
            return form
    if media.startswith("text/"):
        text = _maybe_text(body)  # TorchServe hands text bodies over as str (bytes when not UTF-8)
        return {"body": text, "data": text}
    return {"body": body, "data": body}


FORM_TYPE = "application/x-www-form-urlencoded"
_FORM_NAME = re.compile(rb"[^\s=&]+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def parse_form(body: bytes) -> dict[str, Any] | None:
    """Form fields by name, as TorchServe hands them to a handler: values are bytes, percent- and ``+``-decoded,
    the last of a repeated name wins, a name without ``=`` has an empty value.

    None when the body is not a form: curl ``-d``/``--data-binary`` labels any file this way, and TorchServe would
    turn an image or a text without ``=`` into garbage or no fields at all. A body is taken as a form when it is
    UTF-8 text on one line (a trailing line break is ignored) with at least one ``=``, only valid ``%XX`` escapes,
    and a name free of spaces at the start of every ``&``-separated part.
    """
    text = body.rstrip(b"\r\n")
    if b"=" not in text or _CONTROL.search(text) or _BAD_ESCAPE.search(text):
        return None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields: dict[str, Any] = {}
    for part in text.split(b"&"):
        name, _, value = part.partition(b"=")
        if not _FORM_NAME.fullmatch(name):
            return None
        fields[_form_decode(name).decode("utf-8", "replace")] = _form_decode(value)
    return fields


def _form_decode(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def decode_for(request: InferRequest) -> dict[str, Any]:
    """The handler's data item for a request of any protocol."""
    if request.protocol == Protocol.OIP_V2.value:
        from modelserve.workers import oip

        return oip.decode_request(request.body, request.headers)
    item = decode_request(request.body, request.content_type)
    if request.protocol == Protocol.KSERVE_V1.value:
        value = item["body"]
        if not isinstance(value, dict) or not isinstance(value.get("instances"), list):
            raise BadInputError('KServe v1 requests are JSON objects with an "instances" list')
    return item


def encode_protocol_result(
    output: Any, item: dict[str, Any], protocol: str, model_name: str, model_version: str, output_names: list[str]
) -> InferResult:
    """A handler's output as a KServe v1 or Open Inference Protocol v2 response."""
    if protocol == Protocol.OIP_V2.value:
        from modelserve.workers import oip

        body, headers, content_type = oip.encode_response(output, item["oip"], model_name, model_version, output_names)
        return InferResult(status=200, content_type=content_type, headers=headers, body=body)
    body = safejson.dumps({"predictions": output}, default=_json_default)
    return InferResult(status=200, content_type=JSON_TYPE, body=body)


def _json_default(value: Any) -> Any:
    # numpy arrays and scalars, torch tensors: everything with tolist() or item()
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    raise TypeError(f"result of type {type(value).__name__} is not JSON serializable")


def encode_result(output: Any, response: ResponseInfo) -> InferResult:
    """bytes raw, str as text, anything else as JSON; the handler's status and content type win."""
    if isinstance(output, (bytes, bytearray, memoryview)):
        body, content_type = bytes(output), "application/octet-stream"
    elif isinstance(output, str):
        body, content_type = output.encode(), "text/plain; charset=utf-8"
    else:
        try:
            body = safejson.dumps(output, default=_json_default)
        except (TypeError, ValueError, RecursionError) as exc:
            return error_result(500, f"handler result cannot be sent: {exc}")
        content_type = JSON_TYPE
    return InferResult(
        status=response.status,
        content_type=response.content_type or content_type,
        headers=dict(response.headers),
        body=body,
    )


def error_result(status: int, message: str) -> InferResult:
    return InferResult(status=status, content_type=ERROR_CONTENT_TYPE, body=message.encode())
