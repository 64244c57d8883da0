"""Request bodies into handler data items: forms as TorchServe's frontend splits them; untrusted bodies only ever
raise BadInputError; JSON results are valid JSON."""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelserve.batching.types import InferRequest, Protocol
from modelserve.handler import BadInputError, ResponseInfo
from modelserve.protocols import CODECS, kserve_v1
from modelserve.protocols.codec import ModelTarget
from modelserve.protocols.multipart import MAX_PARTS
from modelserve.protocols.torchserve import decode_request, encode_result

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


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> tuple[bytes, str]:
    """A multipart/form-data body of (name, value, filename) parts and its Content-Type."""
    chunks = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_fields_by_name_files_as_bytes_text_as_str() -> None:
    body, content_type = multipart([("text", "café".encode(), None), ("image", b"\x89PNG\r\n\x00", "a.png")])
    item = decode_request(body, content_type)
    assert item == {"body": "café", "data": "café", "text": "café", "image": b"\x89PNG\r\n\x00"}


def test_multipart_with_a_quoted_boundary() -> None:
    body, _ = multipart([("a", b"1", None)], boundary="with space")
    assert decode_request(body, 'multipart/form-data; boundary="with space"')["a"] == "1"


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=caf\u00e9",  # killed the worker on 090138f (latin-1 encode of the header)
        "multipart/form-data; boundary=\u2603",
        "multipart/form-data; boundary=\udce9",  # a byte that was no UTF-8, as a surrogate escape
        "multipart/form-data; boundary=\ud800",
        "multipart/form-data",
        "multipart/form-data; boundary=" + "b" * 71,
    ],
)
def test_a_boundary_that_is_not_short_ascii_is_a_bad_input(content_type: str) -> None:
    with pytest.raises(BadInputError, match="boundary"):
        decode_request(b"--x\r\n\r\n", content_type)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not a form at all", "malformed"),
        (b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n', "closing boundary"),  # truncated
        (b"--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--\r\n", "name="),
        (b"--XyZ--\r\n", "no fields"),
    ],
)
def test_malformed_multipart_bodies_are_bad_inputs(body: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        decode_request(body, "multipart/form-data; boundary=XyZ")


def test_a_multipart_body_with_too_many_parts_is_refused_quickly() -> None:
    body, content_type = multipart([(f"f{i}", b"x", None) for i in range(20_000)])
    started = time.perf_counter()
    with pytest.raises(BadInputError, match=f"more than {MAX_PARTS} parts"):
        decode_request(body, content_type)
    # 090138f's e-mail parser spent about 12 s on this body; the part limit stops the parser early
    assert time.perf_counter() - started < 2.0


def test_a_multipart_body_at_the_part_limit_decodes() -> None:
    body, content_type = multipart([(f"f{i}", b"x", None) for i in range(MAX_PARTS)])
    assert len(decode_request(body, content_type)) == MAX_PARTS + 2


@pytest.mark.parametrize("media", ["application/json", "application/vnd.api+json"])
def test_json_nested_past_the_limit_is_a_bad_input(media: str) -> None:
    with pytest.raises(BadInputError, match="deeper than"):
        decode_request(b"[" * 1000 + b"]" * 1000, media)


def test_kserve_v1_deep_json_is_a_bad_input() -> None:
    body = b'{"instances": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(BadInputError, match="deeper than"):
        kserve_v1.CODEC.decode(InferRequest("r", "application/json", {}, body, Protocol.KSERVE_V1.value))


def test_json_results_with_nan_are_valid_json_with_null() -> None:
    result = encode_result({"score": math.nan, "all": np.array([1.0, np.inf])}, ResponseInfo())
    assert result.status == 200
    assert json.loads(result.body, parse_constant=pytest.fail) == {"score": None, "all": [1.0, None]}
    v1 = kserve_v1.CODEC.encode([math.nan], {}, ResponseInfo(), ModelTarget("m", "1"))
    assert json.loads(v1.body, parse_constant=pytest.fail) == {"predictions": [None]}


part_names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\r\n\\'), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(part_names, st.binary(max_size=40), st.booleans()), min_size=1, max_size=6))
def test_multipart_bodies_round_trip(parts: list[tuple[str, bytes, bool]]) -> None:
    body, content_type = multipart([(n, v, "f.bin" if is_file else None) for n, v, is_file in parts])
    item = decode_request(body, content_type)
    for name, value, is_file in {n: (n, v, f) for n, v, f in parts}.values():
        got = item[name]
        assert got == value if is_file else (got.encode() if isinstance(got, str) else got) == value


content_types = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/octet-stream",
        "multipart/form-data; boundary=XyZ",
        "multipart/form-data; boundary=\u00e9",
        "multipart/form-data",
    ]
) | st.text(max_size=60)
protocols = st.sampled_from([p.value for p in Protocol])
bodies = (
    st.binary(max_size=300)
    | st.text(alphabet='[]{}",:0123456789.-eE truefalsnuinpts"', max_size=300).map(str.encode)
    | st.lists(st.tuples(part_names, st.binary(max_size=20), st.booleans()), max_size=4).map(
        lambda parts: multipart([(n, v, "f" if f else None) for n, v, f in parts])[0]
    )
    | st.integers(min_value=0, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth)
)


@settings(max_examples=400, deadline=None)
@given(bodies, content_types, protocols)
def test_any_body_decodes_or_raises_bad_input_only(body: bytes, content_type: str, protocol: str) -> None:
    with contextlib.suppress(BadInputError):
        CODECS[protocol].decode(InferRequest("r", content_type, {"content-type": content_type}, body, protocol))
