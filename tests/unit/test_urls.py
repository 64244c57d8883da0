"""Registration URLs: normalised from their parts, rules matched on the normalised form, credentials never shown."""

from __future__ import annotations

import base64

import pytest

from modelserve.errors import ForbiddenError, InvalidRequestError
from modelserve.models.store import basic_auth_for
from modelserve.models.urls import check_url_allowed, looks_like_url, parse_remote_url


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("http://127.0.0.1:8000/ok/../x.mar", "http://127.0.0.1:8000/x.mar"),
        ("http://127.0.0.1:8000/ok/./a/../b.mar", "http://127.0.0.1:8000/ok/b.mar"),
        ("http://127.0.0.1:8000/ok/%2e%2e/x.mar", "http://127.0.0.1:8000/x.mar"),
        ("http://127.0.0.1:8000/../../x.mar", "http://127.0.0.1:8000/x.mar"),
        ("HTTP://EXAMPLE.com/A.mar", "http://example.com:80/A.mar"),
        ("https://example.com./m.mar", "https://example.com:443/m.mar"),
        ("http://127.1:81/m", "http://127.0.0.1:81/m"),
        ("http://0x7f.0.0.1:81/m", "http://127.0.0.1:81/m"),
        ("http://2130706433:81/m", "http://127.0.0.1:81/m"),
        ("http://[0:0::1]:81/m", "http://[::1]:81/m"),
        ("http://b\u00fccher.example/m", "http://xn--bcher-kva.example:80/m"),
        ("http://h:81/%7euser/%41a%3f", "http://h:81/~user/Aa%3F"),
        ("http://h:81/caf\u00e9", "http://h:81/caf%C3%A9"),
        ("http://h:81/m.mar?v=1#frag", "http://h:81/m.mar?v=1"),
        ("http://h:81", "http://h:81/"),
    ],
)
def test_url_is_normalised_from_its_parts(raw: str, canonical: str) -> None:
    assert parse_remote_url(raw).canonical == canonical


def test_userinfo_is_separated_from_the_host_it_seems_to_name() -> None:
    url = parse_remote_url("http://127.0.0.1:8000@localhost:9000/ok/x.mar")
    assert (url.host, url.port) == ("localhost", 9000)
    assert url.canonical == "http://localhost:9000/ok/x.mar"


def test_credentials_are_kept_for_the_request_and_redacted_when_shown() -> None:
    url = parse_remote_url("http://alice:s%40cret@h:81/m.mar")
    assert (url.username, url.password) == ("alice", "s@cret")
    assert url.display == "http://***@h:81/m.mar"
    assert "cret" not in url.canonical and "cret" not in repr(url)

    with pytest.raises(InvalidRequestError) as caught:  # "/" unencoded in the password: the rest looks like a port
        parse_remote_url("http://alice:sec/ret@h/m.mar")
    assert "sec" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        ("ftp://h/m.mar", ForbiddenError, "only http and https"),
        ("file:///etc/passwd", ForbiddenError, "only http and https"),
        ("http://h:81/a\\..\\x.mar", InvalidRequestError, "backslash"),
        ("http://h:81/a b", InvalidRequestError, "space or control"),
        ("http://h:81/ok/..%2Fx.mar", InvalidRequestError, "encoded '/'"),
        ("http://h:81/ok/..%5cx.mar", InvalidRequestError, "encoded '\\'"),
        ("http://h:81/%zz", InvalidRequestError, "percent-encoded byte"),
        ("http://h:0/m", InvalidRequestError, "invalid port"),
        ("http://h:99999/m", InvalidRequestError, "invalid port"),
        ("http://h:8x/m", InvalidRequestError, "invalid port"),
        ("http://256.1.1.1/m", InvalidRequestError, "invalid IPv4"),
        ("http://[fe80::1%25eth0]/m", InvalidRequestError, "zone"),
        ("http://a..b/m", InvalidRequestError, "invalid host"),
        ("http://h%2e/m", InvalidRequestError, "percent-encoded host"),
        ("http:///m", InvalidRequestError, "no host"),
    ],
)
def test_malformed_or_foreign_urls_are_refused(raw: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("\\", "\\\\")):
        parse_remote_url(raw)


def test_rule_is_matched_on_the_normalised_url_not_the_raw_string() -> None:
    rules = [r"http://127\.0\.0\.1:8000/ok/.*"]
    check_url_allowed(parse_remote_url("http://127.0.0.1:8000/ok/sub/../m.mar"), rules)
    for bypass in ("http://127.0.0.1:8000/ok/../x.mar", "http://127.0.0.1:8000@localhost:9000/ok/x.mar"):
        with pytest.raises(ForbiddenError, match="does not match allowed_urls"):
            check_url_allowed(parse_remote_url(bypass), rules)


def test_rule_without_a_default_port_still_matches() -> None:
    check_url_allowed(parse_remote_url("https://models.example/m.mar"), [r"https://models\.example/.*"])
    check_url_allowed(parse_remote_url("https://models.example/m.mar"), [r"https://models\.example:443/.*"])
    with pytest.raises(ForbiddenError):
        check_url_allowed(parse_remote_url("https://models.example:8443/m.mar"), [r"https://models\.example/.*"])


def test_refusal_message_never_shows_credentials() -> None:
    with pytest.raises(ForbiddenError) as caught:
        check_url_allowed(parse_remote_url("http://u:topsecret@h:81/m.mar"), [r"http://other/.*"])
    assert "topsecret" not in str(caught.value) and "***@h:81" in str(caught.value)


def test_empty_allowed_urls_refuses_everything() -> None:
    with pytest.raises(ForbiddenError, match="allowed_urls is empty"):
        check_url_allowed(parse_remote_url("http://h/m.mar"), [])


def test_any_scheme_prefix_marks_a_url_not_a_file_name() -> None:
    assert looks_like_url("HTTP://h/m") and looks_like_url("ftp://h/m") and looks_like_url("file:///x")
    assert not looks_like_url("model.mar") and not looks_like_url("a:b.mar")


def test_credentials_go_only_to_the_origin_they_were_written_for() -> None:
    first = parse_remote_url("http://alice:pw@h:81/redirect")
    expected = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    assert basic_auth_for(parse_remote_url("http://h:81/m.mar"), first) == expected
    assert basic_auth_for(parse_remote_url("http://other:81/m.mar"), first) == {}
    assert basic_auth_for(parse_remote_url("https://h:81/m.mar"), first) == {}
    assert basic_auth_for(parse_remote_url("http://h:81/m.mar"), parse_remote_url("http://h:81/x")) == {}
