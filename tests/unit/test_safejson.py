"""Untrusted JSON: a nesting limit checked without recursion; responses are valid JSON (non-finite floats as null)."""

from __future__ import annotations

import contextlib
import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelserve import safejson


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


@pytest.mark.parametrize("depth", [1, 50, safejson.MAX_DEPTH])
def test_documents_up_to_the_limit_parse(depth: int) -> None:
    assert safejson.loads(nested(depth).encode()) == json.loads(nested(depth))


@pytest.mark.parametrize("depth", [safejson.MAX_DEPTH + 1, 1000, 100_000])
def test_documents_past_the_limit_are_refused_naming_the_depth(depth: int) -> None:
    with pytest.raises(safejson.JSONInputError, match=f"deeper than {safejson.MAX_DEPTH}"):
        safejson.loads(nested(depth).encode())


def test_objects_and_arrays_count_alike() -> None:
    deep_objects = '{"a":' * 60 + "[" * 60 + "1" + "]" * 60 + "}" * 60
    with pytest.raises(safejson.JSONInputError, match="deeper"):
        safejson.loads(deep_objects)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps(["[" * 5000, "{" * 5000, '\\"[[[['])
    assert safejson.loads(text) == json.loads(text)


def test_unclosed_brackets_are_refused_without_recursion() -> None:
    with pytest.raises(safejson.JSONInputError):
        safejson.loads(b"[" * 200_000)


def test_utf16_bodies_are_read_like_json_loads_reads_them() -> None:
    assert safejson.loads('{"a": [1]}'.encode("utf-16")) == {"a": [1]}


@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b"{", b"", b"[1,]", b"NaNx"])
def test_what_is_not_json_raises_the_one_error_type(raw: bytes) -> None:
    with pytest.raises(safejson.JSONInputError):
        safejson.loads(raw)


def test_the_depth_check_is_fast_on_a_large_body() -> None:
    body = "[" + ",".join("[1,2,3]" for _ in range(200_000)) + "]"
    started = time.perf_counter()
    assert not safejson.nesting_depth_exceeds(body)
    assert time.perf_counter() - started < 1.0  # tens of milliseconds here; a loop per character would be seconds


def test_non_finite_floats_are_written_as_null() -> None:
    body = safejson.dumps({"nan": math.nan, "inf": [math.inf, -math.inf], "text": "NaN Infinity", "x": 1.5})
    assert json.loads(body, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}")) == {
        "nan": None,
        "inf": [None, None],
        "text": "NaN Infinity",
        "x": 1.5,
    }


def test_null_reads_back_as_nan_in_a_float_tensor() -> None:
    values = json.loads(safejson.dumps([math.nan, 2.0]))
    assert np.isnan(np.asarray(values, dtype=np.float32)[0])


def test_unserializable_and_circular_values_still_raise() -> None:
    with pytest.raises(TypeError):
        safejson.dumps(object())
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        safejson.dumps(loop)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_dumps_output_is_always_strict_json(value: object) -> None:
    text = safejson.dumps(value).decode()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='[]{}"\\,:1a ', max_size=300))
def test_loads_raises_only_its_own_error_on_any_text(text: str) -> None:
    with contextlib.suppress(safejson.JSONInputError):
        safejson.loads(text)
