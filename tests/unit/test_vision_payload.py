"""Image payloads: a body that looks like JSON but nests too deep is no image and no crash (a BadInputError)."""

from __future__ import annotations

import base64
import json

import pytest

from modelserve.handler import BadInputError
from modelserve.vision import decode_image, payload_bytes


def test_deep_json_is_taken_as_bytes_and_refused_as_an_image() -> None:
    body = b"{" + b'"a":{' * 3000 + b"}" * 3001  # raised RecursionError in the handler before the nesting limit
    raw = payload_bytes({"body": body})
    assert raw == body
    with pytest.raises(BadInputError):
        decode_image(raw, "RGB")


def test_base64_json_still_gives_the_image_bytes() -> None:
    body = json.dumps({"data": base64.b64encode(b"\x89PNG").decode()}).encode()
    assert payload_bytes({"body": body}) == b"\x89PNG"
