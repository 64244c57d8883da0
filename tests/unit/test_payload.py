"""Request bodies into handler data items: form-urlencoded bodies as TorchServe's frontend splits them."""

from __future__ import annotations

from typing import Any

import pytest

from modelserve.workers.payload import decode_request

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"a=1&b=2", {"a": b"1", "b": b"2"}),
        (b"a=1&a=2", {"a": b"2"}),  # the last of a repeated name wins
        (b"text=hello world", {"text": b"hello world"}),  # curl -d 'text=hello world' sends the space as is
        (b"a=b+c%20d", {"a": b"b c d"}),
        (b"a=%C3%A9", {"a": "\u00e9".encode()}),
        (b"a=%FF", {"a": b"\xff"}),  # values are bytes, decoded from their escapes only
        (b"flag&x=1", {"flag": b"", "x": b"1"}),
        (b"a=1\n", {"a": b"1"}),  # a file saved with a final line break
        (b"caf%C3%A9=1", {"caf\u00e9": b"1"}),
    ],
)
def test_form_fields_become_the_data_item(body: bytes, fields: dict[str, Any]) -> None:
    assert decode_request(body, FORM) == fields
    assert decode_request(body, FORM + "; charset=UTF-8") == fields


@pytest.mark.parametrize(
    "body",
    [
        b"hello",  # no '=': TorchServe hands the handler no field at all
        b'{"k": 1}',
        b"",
        b"\x89PNG\r\n\x1a\n\x00\x00=\xff&",  # curl --data-binary @image.png sends this content type
        b"a=%zz",  # TorchServe answers 500 for a bad escape
        b"a=%4",
        b"=v",  # and for an empty name
        b"a=1&&b=2",
        b"x = 5 is the answer",  # text with a '=' in it, not a form
        b"a=1\nb=2",
        b"a=\xff",
    ],
)
def test_a_body_that_is_no_form_stays_raw(body: bytes) -> None:
    assert decode_request(body, FORM) == {"body": body, "data": body}


def test_other_types_are_unchanged() -> None:
    assert decode_request(b"a=1", "application/octet-stream") == {"body": b"a=1", "data": b"a=1"}
    assert decode_request(b'{"a": 1}', "application/json") == {"body": {"a": 1}, "data": {"a": 1}}


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain", b"caf\xc3\xa9", "café"),  # text arrives as str, as TorchServe hands it over
        ("text/csv; charset=utf-8", b"a,b\n1,2", "a,b\n1,2"),
        ("text/plain", b"\xff\xfe not utf-8", b"\xff\xfe not utf-8"),  # bytes when it is not UTF-8
        ("application/octet-stream", b"caf\xc3\xa9", b"caf\xc3\xa9"),
    ],
)
def test_text_bodies_are_str_when_utf8(content_type: str, body: bytes, expected: object) -> None:
    item = decode_request(body, content_type)
    assert item["body"] == item["data"] == expected
