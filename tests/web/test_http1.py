"""HTTP/1.1 framing decisions and response heads, without sockets (meshkit.web.http1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.web import http1
from meshkit.web.http1 import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    HttpError,
    body_allowed,
    cached_head,
    check_framing,
    error_bytes,
    parse_target,
    scan_head,
    serialize_head,
    wants_keep_alive,
)
from meshkit.web.message import Headers
from meshkit.web.paths import canonical_path


def framing_status(headers: list[tuple[bytes, bytes]]) -> int:
    try:
        check_framing(headers)
    except HttpError as exc:
        return exc.status
    return 0


def test_framing_plain() -> None:
    assert check_framing([]).kind == BODY_NONE
    f = check_framing([(b"Content-Length", b"12")])
    assert (f.kind, f.length, f.expect_continue) == (BODY_LENGTH, 12, False)
    assert check_framing([(b"content-length", b"0")]).kind == BODY_NONE
    f = check_framing([(b"Transfer-Encoding", b"chunked")])
    assert (f.kind, f.length) == (BODY_CHUNKED, None)
    f = check_framing([(b"Transfer-Encoding", b"Chunked"), (b"Expect", b"100-continue")])
    assert f.kind == BODY_CHUNKED and f.expect_continue
    f = check_framing([(b"Content-Length", b"5"), (b"EXPECT", b"100-Continue")])
    assert f.expect_continue


@pytest.mark.parametrize(
    "headers",
    [
        # request smuggling: both framings
        [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"0")],
        # repeated Content-Length, equal or not, and lists
        [(b"Content-Length", b"3"), (b"Content-Length", b"4")],
        [(b"Content-Length", b"3"), (b"Content-Length", b"3")],
        [(b"Content-Length", b"3, 3")],
        # not plain digits
        [(b"Content-Length", b"-1")],
        [(b"Content-Length", b"+1")],
        [(b"Content-Length", b"0x10")],
        [(b"Content-Length", b"")],
        [(b"Content-Length", b"1" * 30)],
        # Transfer-Encoding not ending in one chunked
        [(b"Transfer-Encoding", b"gzip")],
        [(b"Transfer-Encoding", b"chunked, chunked")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"chunked, gzip")],
        [(b"Transfer-Encoding", b"chunked,")],
    ],
)
def test_framing_refused(headers: list[tuple[bytes, bytes]]) -> None:
    assert framing_status(headers) == 400


def test_framing_other_statuses() -> None:
    assert framing_status([(b"Transfer-Encoding", b"gzip, chunked")]) == 501
    assert framing_status([(b"Expect", b"something")]) == 417


@given(st.integers(0, 10**15))
def test_framing_any_length(n: int) -> None:
    f = check_framing([(b"Content-Length", str(n).encode())])
    assert f.length == n
    assert f.kind == (BODY_LENGTH if n else BODY_NONE)


def test_scan_head() -> None:
    for _ in range(2):  # computed, then memoised
        items, host, keep, framing, size = scan_head(
            [(b"Host", b"a.example:80"), (b"X-A", b"\xe9")], "1.1"
        )
        assert items == [("Host", "a.example:80"), ("X-A", "\xe9")]
        items.append(("X-Changed", "by a handler"))  # a fresh list every time
        assert (host, keep, framing.kind) == ("a.example:80", True, BODY_NONE)
        assert size == len("Host: a.example:80\r\nX-A: \xe9\r\n")
    assert not scan_head([(b"Host", b"a"), (b"Connection", b"close")], "1.1")[2]
    assert not scan_head([], "1.0")[2]
    assert scan_head([(b"Connection", b"Keep-Alive")], "1.0")[2]
    assert scan_head([(b"Host", b"a"), (b"Content-Length", b"4")], "1.1")[3].length == 4
    for bad in ([], [(b"Host", b"a"), (b"host", b"b")]):
        with pytest.raises(HttpError) as info:
            scan_head(bad, "1.1")
        assert info.value.status == 400
    with pytest.raises(HttpError):
        scan_head([(b"Host", b"a"), (b"Content-Length", b"1"), (b"Content-Length", b"2")], "1.1")


def test_keep_alive_rules() -> None:
    assert wants_keep_alive("1.1", None)
    assert not wants_keep_alive("1.1", "close")
    assert not wants_keep_alive("1.1", "keep-alive, Close")
    assert not wants_keep_alive("1.0", None)
    assert wants_keep_alive("1.0", "keep-alive")
    assert not wants_keep_alive("1.0", "keep-alive, close")


def test_parse_target_forms() -> None:
    t = parse_target(b"/a%20b/c?x=%20&y#frag")
    assert (t.path, t.query, t.authority) == ("/a b/c", "x=%20&y", "")
    t = parse_target(b"http://Host.example:8080/p%C3%A9?q")
    assert (t.path, t.query, t.authority) == ("/p\xe9", "q", "Host.example:8080")
    assert parse_target(b"http://h.example").path == "/"
    assert parse_target(b"http://h.example?q=1") == http1.Target("/", "q=1", "h.example")
    assert parse_target(b"*", "OPTIONS").path == "*"
    assert parse_target(b"h.example:443", "CONNECT").authority == "h.example:443"
    # the path is canonical: decoded once, dot segments resolved, slashes merged (issue 16)
    assert parse_target(b"/a/../b%2fc").path == "/b/c"
    assert parse_target(b"//a/./b//%2e%2e/c/").path == "/a/c/"
    with pytest.raises(HttpError):
        parse_target(b"/a/../../etc/passwd")
    with pytest.raises(HttpError):
        parse_target(b"/%2e%2e/etc/passwd")


@pytest.mark.parametrize(
    "uri",
    [
        b"/a%00b",  # NUL, encoded
        b"/a\x00b",  # NUL, raw
        b"/%ff",  # not UTF-8
        b"/%c3",  # cut UTF-8
        b"/%zz",  # bad escape
        b"/%4",  # short escape
        b"a/b",  # no form
        b"ftp://h.example/",  # not http(s)
        b"http://user@h.example/",  # userinfo
        b"http:///x",  # empty authority
        b"*",  # asterisk outside OPTIONS
    ],
)
def test_parse_target_refused(uri: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_target(uri)
    assert info.value.status == 400


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_parse_target_roundtrip(text: str) -> None:
    from urllib.parse import quote

    # every character (`/` and `.` too) encoded: the path decodes once, then is canonical
    try:
        t = parse_target(b"/" + quote(text, safe="").encode())
    except HttpError:
        assert canonical_path("/" + text) is None  # only a `..` above the root is refused
        return
    assert t.path == canonical_path("/" + text)


def head_fields(raw: bytes) -> list[tuple[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    assert raw.endswith(b"\r\n\r\n")
    return [tuple(line.split(": ", 1)) for line in lines[1:] if line]  # type: ignore[misc]


def test_serialize_head_adds_fields() -> None:
    raw = serialize_head(
        200, Headers([("Content-Type", "text/plain")]), content_length=5, keep_alive=True
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    fields = dict(head_fields(raw))
    assert fields["Server"] == "meshkit"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", fields["Date"])
    assert fields["Content-Length"] == "5"
    assert "Connection" not in fields


def test_serialize_head_respects_handler_fields() -> None:
    h = Headers(
        [
            ("Server", "other"),
            ("Content-Length", "7"),
            ("Connection", "x"),
            ("Transfer-Encoding", "gzip"),
            ("Date", "then"),
        ]
    )
    fields = head_fields(serialize_head(200, h, content_length=5, keep_alive=False))
    assert ("Server", "other") in fields
    assert ("Content-Length", "7") in fields and ("Content-Length", "5") not in fields
    assert ("Connection", "close") in fields and ("Connection", "x") not in fields
    assert all(k != "Transfer-Encoding" for k, _ in fields)
    assert ("Date", "then") in fields


def test_serialize_head_connection_and_chunked() -> None:
    f = dict(
        head_fields(
            serialize_head(200, Headers(), content_length=1, keep_alive=True, version="1.0")
        )
    )
    assert f["Connection"] == "keep-alive"
    f = dict(
        head_fields(
            serialize_head(200, Headers(), content_length=None, chunked=True, keep_alive=True)
        )
    )
    assert f["Transfer-Encoding"] == "chunked" and "Content-Length" not in f
    for status in (204, 304, 101):
        f = dict(head_fields(serialize_head(status, Headers(), content_length=10, keep_alive=True)))
        assert "Content-Length" not in f


@pytest.mark.parametrize(
    "name,value", [("X-A", "a\r\nSet-Cookie: x"), ("X\nB", "1"), ("X-A", "a\rb")]
)
def test_serialize_head_refuses_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        serialize_head(200, Headers([(name, value)]), content_length=0, keep_alive=True)


def test_cached_head_equals_serialized() -> None:
    def undated(raw: bytes) -> bytes:
        return re.sub(rb"Date: [^\r]*\r\n", b"", raw)

    h = Headers([("Content-Type", "text/html"), ("ETag", '"x"')])
    for keep in (True, False):
        for version in ("1.0", "1.1"):
            a = cached_head(200, h, 120, keep, version)
            b = serialize_head(200, h, content_length=120, keep_alive=keep, version=version)
            assert undated(a) == undated(b)
    h2 = Headers([("Content-Type", "text/plain")])
    assert undated(cached_head(200, h2, 120, True, "1.1")) != undated(
        cached_head(200, h, 120, True, "1.1")
    )


def test_body_allowed() -> None:
    assert body_allowed(200, "GET")
    assert not body_allowed(200, "HEAD")
    assert not body_allowed(204, "GET")
    assert not body_allowed(304, "GET")
    assert not body_allowed(100, "GET")


def test_error_bytes() -> None:
    raw = error_bytes(431)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert body == b"431 Request Header Fields Too Large\n"
    fields = dict(head_fields(head + b"\r\n\r\n"))
    assert fields["Connection"] == "close"
    assert fields["Content-Length"] == str(len(body))
