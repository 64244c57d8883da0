"""multipart/form-data bodies into form fields, parsed by python-multipart (worker side, imported on first use).

python-multipart is a streaming parser made for HTTP forms; at most :data:`MAX_PARTS` parts are taken, and a body
that does not parse raises BadInputError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from modelserve.handler_errors import BadInputError
from modelserve.protocols.codec import maybe_text

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

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


def parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
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
        fields[name.decode("utf-8", "replace")] = raw if b"filename" in options else maybe_text(raw)
    if not fields:
        raise BadInputError("multipart body has no fields")
    return fields
