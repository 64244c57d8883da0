"""TorchServe's /predictions protocol: raw, JSON, text, form or multipart bodies in; bytes, text or JSON out.

Every parser here takes untrusted bytes: JSON goes through :mod:`modelserve.safejson` (nesting limit), multipart
through :mod:`modelserve.protocols.multipart`, and a body that does not decode raises BadInputError. JSON results are
written by :func:`modelserve.safejson.dumps`: NaN and infinities become ``null``, so a response body is always valid
JSON. Errors are TorchServe's ``{"code", "type", "message"}``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from modelserve import safejson
from modelserve.batching.types import InferRequest, InferResult, Protocol
from modelserve.handler_errors import BadInputError
from modelserve.protocols.codec import JSON_TYPE, Codec, ModelTarget, error_result, json_default, maybe_text

if TYPE_CHECKING:
    from modelserve.handler import ResponseInfo

FORM_TYPE = "application/x-www-form-urlencoded"
_FORM_NAME = re.compile(rb"[^\s=&]+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")

# TorchServe names the ``type`` of an error after its exception class, one per status
TYPE_NAMES = {
    400: "BadRequestException",
    401: "Unauthorized",
    403: "ForbiddenException",
    404: "ModelNotFoundException",
    405: "MethodNotAllowedException",
    408: "RequestTimeout",
    409: "ConflictStatusException",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    417: "ExpectationFailed",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
    507: "InsufficientStorageException",
}


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


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
        from modelserve.protocols.multipart import parse_multipart  # python-multipart: worker side, on first use

        fields = parse_multipart(body, content_type)
        first = next(iter(fields.values()))
        return {"body": first, "data": first, **fields}
    if media == FORM_TYPE:
        form = parse_form(body)
        if form is not None:
            return form
    if media.startswith("text/"):
        text = maybe_text(body)
        return {"body": text, "data": text}
    return {"body": body, "data": body}


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


def _body_of(output: Any) -> tuple[bytes, str]:
    """bytes raw, str as text, anything else as JSON; ValueError (or TypeError) when it is none of these."""
    if isinstance(output, (bytes, bytearray, memoryview)):
        return bytes(output), "application/octet-stream"
    if isinstance(output, str):
        return output.encode(), "text/plain; charset=utf-8"
    return safejson.dumps(output, default=json_default), JSON_TYPE


def encode_result(output: Any, response: ResponseInfo) -> InferResult:
    """The handler's output, its parts first (in order, as one body); the handler's status and content type win."""
    try:
        body, content_type = _body_of(output)
        if response.parts and response.status < 400:
            body = b"".join([*(_body_of(part)[0] for part in response.parts), body])
    except (TypeError, ValueError, RecursionError) as exc:
        return error_result(500, f"handler result cannot be sent: {exc}")
    return InferResult(
        status=response.status,
        content_type=response.content_type or content_type,
        headers=dict(response.headers),
        body=body,
    )


class TorchServeCodec(Codec):
    protocol = Protocol.TORCHSERVE

    def decode(self, request: InferRequest) -> dict[str, Any]:
        return decode_request(request.body, request.content_type)

    def encode(self, output: Any, item: dict[str, Any], response: ResponseInfo, model: ModelTarget) -> InferResult:
        return encode_result(output, response)

    def error_document(self, status: int, message: str, type_name: str | None = None) -> dict[str, object]:
        return {"code": status, "type": type_name or TYPE_NAMES.get(status, "ServerException"), "message": message}


CODEC = TorchServeCodec()
