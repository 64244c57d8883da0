"""Request bodies into the handler's ``data`` dicts, and handler outputs into response bytes (worker side)."""

from __future__ import annotations

import json
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote_to_bytes

from modelserve.handler import BadInputError, ResponseInfo
from modelserve.workers.protocol import ERROR_CONTENT_TYPE, InferRequest, InferResult, Protocol

JSON_TYPE = "application/json"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BadInputError("malformed multipart body (no parts or missing boundary)")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise BadInputError("multipart part without a name in its Content-Disposition")
        value = part.get_payload(decode=True)
        raw = value if isinstance(value, bytes) else b""
        fields[name] = raw if part.get_filename() is not None else _maybe_text(raw)
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
            value: Any = json.loads(body) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    body = json.dumps({"predictions": output}, default=_json_default).encode()
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
            body = json.dumps(output, default=_json_default).encode()
        except (TypeError, ValueError) as exc:
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
