"""Request heads with too many header fields or too long a field line get 431 (security issue
16, finding 5): counted as the fields arrive, so a head of 150,000 fields is refused after the
first hundred rather than parsed whole. Raw requests against a real `meshkit web` process over
both fast paths; the limits themselves on an in-process server and in the `limits` directive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives.limits import LimitsConfig
from meshkit.web.message import Request, Response
from meshkit.web.server import DEFAULT_MAX_FIELD_LINE, DEFAULT_MAX_FIELDS
from support.httpserver_util import ServerThread, request
from support.web_proc_util import exchange, static_site


@pytest.fixture
def port(fastpath_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    with static_site(tmp_path, fastpath_env) as p:
        yield p


def _head(fields: int, line: int = 0, version: str = "1.1") -> bytes:
    """GET / with Host plus `fields` more fields (Host counts: fields + 1 in all), the last
    one `line` bytes long as `name: value` when line is given."""
    parts = [f"GET / HTTP/{version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()]
    parts += [b"X-F%d: v\r\n" % i for i in range(fields - 2)]
    if line:
        parts.append(b"X-Long: " + b"a" * (line - len("X-Long: ")) + b"\r\n")
    return b"".join(parts) + b"\r\n"


def test_a_hundred_fields_pass_and_one_more_is_431(port: int) -> None:
    # Host, Connection and 98 X- fields: 100 fields
    assert exchange(port, _head(100))[0] == 200
    assert exchange(port, _head(101))[0] == 431


def test_150000_fields_are_refused(port: int) -> None:
    # about 1.3 MB of tiny fields (under the 1 MiB default head limit it was answered 200)
    raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 150_000 + b"\r\n"
    status, data = exchange(port, raw)
    assert status == 431
    assert b"431 Request Header Fields Too Large" in data


def test_a_field_line_over_8kib_is_431(port: int) -> None:
    assert exchange(port, _head(3, line=DEFAULT_MAX_FIELD_LINE))[0] == 200
    assert exchange(port, _head(3, line=DEFAULT_MAX_FIELD_LINE + 1))[0] == 431
    assert exchange(port, _head(3, line=100_000))[0] == 431


def test_the_limits_are_the_servers_defaults() -> None:
    assert DEFAULT_MAX_FIELDS == 100
    assert DEFAULT_MAX_FIELD_LINE == 8192


def _ok(request: Request) -> Response:
    return Response.text(200, "ok\n")


@pytest.mark.parametrize("compiled", [True, False])
def test_the_server_limits_are_settable(compiled: bool) -> None:
    st = ServerThread(_ok, compiled=compiled, max_fields=5, max_field_line=64)
    try:
        five = "".join(f"X-{i}: v\r\n" for i in range(4))  # with Host: 5 fields

        def status(fields: str) -> int:
            raw = f"GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode()
            return request(st.port, raw)[0].status

        assert status(five) == 200
        six = five + "X-5: v\r\n"
        reply, closed = request(st.port, f"GET / HTTP/1.1\r\nHost: a\r\n{six}\r\n".encode())
        assert reply.status == 431 and closed
        long = "X-L: " + "a" * 60 + "\r\n"  # 65 bytes as `name: value`
        assert status(long) == 431
        st.run(lambda: st.server.set_limits(max_fields=10, max_field_line=128))
        assert status(six) == 200
        assert status(long) == 200
    finally:
        st.stop()


def test_trailer_fields_are_not_counted() -> None:
    st = ServerThread(_ok, max_fields=3)
    try:
        trailers = "".join(f"T-{i}: v\r\n" for i in range(10))
        raw = (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"3\r\nabc\r\n0\r\n{trailers}\r\n"
        )
        assert request(st.port, raw.encode())[0].status == 200
    finally:
        st.stop()


def test_limits_directive_takes_header_fields_and_header_line() -> None:
    text = ":2015 {\n    limits {\n        header 64kb\n        header_fields 200\n"
    text += "        header_line 16kb\n        body 1mb\n    }\n}\n"
    config = load_text(text)
    config.raise_errors()
    site = config.sites[0]
    limits = site.directives["limits"]
    assert isinstance(limits, LimitsConfig)
    assert (limits.header, limits.header_fields, limits.header_line) == (65536, 200, 16384)
    assert site.header_limit == 65536
    # Caddy v1's forms still parse
    for body in ("limits 1mb", "limits {\n header 1kb\n body /up 2mb\n}"):
        config = load_text(":2015 {\n" + body + "\n}\n")
        config.raise_errors()
    bad = load_text(":2015 {\n limits {\n header_fields none\n }\n}\n")
    assert bad.errors and "header_fields" in str(bad.errors[0])


def test_the_limits_directive_reaches_the_running_server(
    fastpath_env: dict[str, str], tmp_path: Path
) -> None:
    """`limits { header_fields N; header_line SIZE; header SIZE }` in a Caddyfile hold for the
    port's server (the smallest of its sites), not only in the parsed config."""
    extra = "    limits {\n header_fields 10\n header_line 1kb\n header 4kb\n }\n"
    with static_site(tmp_path, fastpath_env, extra) as p:
        assert exchange(p, _head(10))[0] == 200
        assert exchange(p, _head(11))[0] == 431
        assert exchange(p, _head(3, line=1024))[0] == 200
        assert exchange(p, _head(3, line=1025))[0] == 431
        many = [b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(6)]
        raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(many) + b"\r\n"
        assert exchange(p, raw)[0] == 431  # 5.4 KiB of head over `header 4kb`


def test_the_default_head_limit_is_64kib(fastpath_env: dict[str, str], tmp_path: Path) -> None:
    with static_site(tmp_path, fastpath_env) as p:
        fields = [b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)]
        raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(fields) + b"\r\n"
        assert exchange(p, raw)[0] == 431  # 72 KB: each line is allowed, the whole is not
        assert exchange(p, _head(90, line=4000))[0] == 200
