"""Response header checks of the connection guard: what may go on the wire."""

from __future__ import annotations

import pytest

from modelserve.server.guard import invalid_header


@pytest.mark.parametrize(("name", "value"), [("X-Fine", "yes"), ("content-type", "text/plain; charset=utf-8"),
                                             ("X-Tab", "a\tb"), ("X-Unicode", "café")])  # fmt: skip
def test_ordinary_headers_pass(name: str, value: str) -> None:
    assert invalid_header(name, value) is None


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
def test_a_value_with_a_control_character_is_refused(value: str) -> None:
    problem = invalid_header("X-Bad", value)
    assert problem is not None and "control character" in problem


@pytest.mark.parametrize("name", ["Bad Name", "X:Colon", "", "X\r\nY", "X-Name\n", "Ünï"])
def test_a_name_that_is_not_a_token_is_refused(name: str) -> None:
    problem = invalid_header(name, "v")
    assert problem is not None and "not an HTTP token" in problem


def test_remembered_valid_headers_never_let_a_bad_one_through() -> None:
    for _ in range(2):  # the second time from the remembered set
        assert invalid_header("Content-Type", "application/json") is None
    for _ in range(2):  # a bad value is never remembered as good
        assert invalid_header("X-Bad", "a\r\nSet-Cookie: x") is not None
        assert invalid_header("Bad Name", "v") is not None
