"""The compiled upstream connection (meshkit._fastpath.UpstreamConn over
csrc/upstream_resp.c) against its pure-Python twin (meshkit.web.proxy.client._Conn over
httptools), on generated upstream responses cut into random reads: Content-Length, chunked
(extensions, trailers), close-delimited, 1xx interim answers, bodiless statuses, answers
to HEAD, HTTP/1.0, bad heads and bad chunking. Both must end with the same status,
headers, body, error class and retry decision; the compiled one may keep a connection the
twin closes only for an answer to HEAD (which the twin leaves to httptools when it comes in
pieces). Skipped when the extension is not built."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web.proxy import client
from meshkit.web.proxy.client import Pool, UpstreamBroken, _Conn, may_retry
from meshkit.web.proxy.heads import _downstream
from meshkit.web.proxy.upstream import Upstream

_fastpath = load_fastpath()
COMPILED: Any = getattr(_fastpath, "UpstreamConn", None) if _fastpath is not None else None
pytestmark = pytest.mark.skipif(COMPILED is None, reason="the C extension is not built")


class _Transport:
    def __init__(self) -> None:
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _run(cls: Any, responses: list[tuple[bytes, bool]], cuts: list[int], eof: bool) -> list[Any]:
    """Feed each (response bytes, head_only) in turn on one connection, cut at `cuts`; what
    each exchange ended with."""
    pool = Pool(Upstream("http", "127.0.0.1", 9), 4, 1.0)
    conn = cls(pool)
    transport = _Transport()
    conn.connection_made(transport)
    out: list[Any] = []
    for data, head_only in responses:
        conn.begin(head_only)
        pos = 0
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            if cut > pos and not transport.closed:
                conn.data_received(data[pos:cut])
                pos = cut
        if transport.closed or (eof and not conn.done):
            conn.connection_lost(None)
        result = (
            conn.head_done,
            conn.status if conn.head_done else None,
            list(conn.headers) if conn.head_done else None,
            conn.take_body() if conn.head_done and conn.error is None else None,
            conn.done,
            type(conn.error).__name__ if conn.error is not None else None,
            conn.got_bytes,
            may_retry(conn, True, "GET", False),
            conn.keep,
        )
        out.append(result)
        if conn.closed or not conn.keep or not conn.done or conn.error is not None:
            break
    return out


_NAMES = st.sampled_from(
    [
        "Server",
        "X-Up",
        "Content-Type",
        "Cache-Control",
        "Set-Cookie",
        "x-lower",
        "Keep-Alive",
        "Trailer",
        "TE",
        "Proxy-Authenticate",
        "X-Named",
    ]
)
_VALUES = st.sampled_from(["1", "text/html", "a b", "a\tb", "x ", "", "\xe9t\xe9", "v=1; p=/"])
_ODD = st.sampled_from(
    [
        b"Bad Name: x",
        b"NoColon",
        b" Folded: x",
        b"X-Ctl: a\x01b",
        b"X-Del: a\x7fb",
        b"X-Nul: a\x00b",
        b"X-CR: a\rb",
        b"Upgrade: h2c",
        b"Connection: Upgrade",
        b"Transfer-Encoding: gzip, chunked",
        b"Content-Length: +5",
        b"Content-Length: 5, 5",
        b"X@: y",
    ]
)
_STATUS = st.sampled_from(
    [
        b"200 OK",
        b"404 Not Found",
        b"500 Oops",
        b"204 No Content",
        b"304 Not Modified",
        b"201",
        b"302 Found",
        b"200 \xe9t\xe9",
    ]
)


@st.composite
def _response(draw: Any, head_only: bool) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(_STATUS)
    fields = [
        draw(_NAMES).encode() + b": " + draw(_VALUES).encode("latin-1")
        for _ in range(draw(st.integers(0, 4)))
    ]
    if draw(st.integers(0, 5)) == 0:
        fields.insert(draw(st.integers(0, len(fields))), draw(_ODD))
    conn = draw(st.sampled_from([None, b"close", b"keep-alive", b"X-Named", b"close, X-Named"]))
    if conn is not None:
        fields.append(b"Connection: " + conn)
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "length", "chunked", "close", "wrong"]))
    code = int(status[:3])
    bodiless = code in (204, 304)
    payload = b""
    if framing == "length" or (framing == "wrong" and not bodiless):
        n = len(body) if framing == "length" else len(body) + draw(st.integers(1, 3))
        fields.append(b"Content-Length: %d" % n)
        payload = body
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        payload = _chunked(draw, body)
    elif not bodiless:
        payload = body
    if bodiless or head_only:
        payload = b""
    head = b"\r\n".join([version + b" " + status, *fields]) + b"\r\n\r\n"
    interim = b""
    if draw(st.integers(0, 4)) == 0:
        interim = draw(
            st.sampled_from(
                [
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                ]
            )
        )
    return interim + head + payload


# chunk extensions httptools refuses (the C decoder must too)
_REFUSED_EXT = [b"; a=b", b";a=b c", b";", b";a;", b';a="x', b";a=b/c"]


def _chunked(draw: Any, body: bytes) -> bytes:
    out = b""
    pos = 0
    while pos < len(body):
        n = draw(st.integers(1, max(1, len(body) - pos)))
        ext = draw(
            st.sampled_from(
                [
                    b"",
                    b"",
                    b";a=b",
                    b";x",
                    b';a="q \\" q"',
                    b";=b",
                    b";a=",
                    b";a;b=c",
                    *_REFUSED_EXT,
                ]
            )
        )
        size = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % n
        out += size + ext + b"\r\n" + body[pos : pos + n] + b"\r\n"
        pos += n
    out += b"0\r\n"
    if draw(st.booleans()):
        out += b"X-Trailer: t\r\n"
    out += b"\r\n"
    if draw(st.integers(0, 6)) == 0:
        # break the framing somewhere
        i = draw(st.integers(0, len(out) - 1))
        out = out[:i] + draw(st.sampled_from([b"g", b"\n", b" "])) + out[i + 1 :]
    return out


def _compare(a: list[Any], b: list[Any], heads_only: list[bool]) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        # everything but `keep` the same
        assert x[:8] == y[:8], (i, x, y)
        if x[8] != y[8]:
            # only an answer to HEAD that the twin gave to httptools: the C side keeps it
            assert heads_only[i] and y[8] and not x[8], (i, x, y)
            return  # the twin stopped using the connection
    assert len(a) == len(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.booleans(), min_size=1, max_size=3).flatmap(
        lambda flags: st.tuples(st.just(flags), st.tuples(*[_response(f) for f in flags]))
    ),
    st.lists(st.integers(0, 400), max_size=4),
    st.booleans(),
)
def test_compiled_connection_agrees_with_the_twin(
    case: tuple[list[bool], tuple[bytes, ...]], cuts: list[int], eof: bool
) -> None:
    flags, datas = case
    responses = list(zip(datas, flags, strict=True))
    twin = _run(_Conn, responses, cuts, eof)
    compiled = _run(COMPILED, responses, cuts, eof)
    _compare(twin, compiled, flags)


# Heads that repeat on one connection (the compiled one compares a head with the last one
# it parsed instead of parsing it again) and heads that begin like another one: a longer
# head, a value cut short, a head the C parser declines, an interim answer.
_SAME = b"HTTP/1.1 200 OK\r\nContent-Length: 3"
_REPEATS = [
    _SAME + b"\r\n\r\nabc",
    _SAME + b"\r\nX-More: 1\r\n\r\nabc",
    _SAME + b"0\r\n\r\n" + b"x" * 30,
    _SAME[:-1] + b"\r\n\r\nab",
    b"HTTP/1.1 100 Continue\r\n\r\n" + _SAME + b"\r\n\r\nabc",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    _SAME + b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]


def _head_of(response: bytes) -> bytes:
    """The response's head(s) alone (an interim answer's and the final one): its answer to
    HEAD, with no body after it."""
    end = response.index(b"\r\n\r\n") + 4
    if response.startswith(b"HTTP/1.1 1"):
        end = response.index(b"\r\n\r\n", end) + 4
    return response[:end]


_HEAD_REPEATS = [_head_of(r) for r in _REPEATS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(_REPEATS), st.just(False)),
            st.tuples(st.sampled_from(_HEAD_REPEATS), st.just(True)),
        ),
        min_size=2,
        max_size=6,
    ),
    st.lists(st.integers(0, 120), max_size=3),
)
def test_repeated_heads_on_one_connection_agree_with_the_twin(
    responses: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    twin = _run(_Conn, responses, cuts, False)
    compiled = _run(COMPILED, responses, cuts, False)
    _compare(twin, compiled, [head_only for _, head_only in responses])


def test_the_proxy_uses_the_compiled_connection_unless_disabled() -> None:
    assert client.CONN is COMPILED


def test_hop_by_hop_marks_agree_with_the_python_filter() -> None:
    assert _fastpath is not None
    raw = (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Named\r\nX-Named: 1\r\nKeep-Alive: t=5"
        b"\r\nServer: s\r\nTE: x\r\nContent-Length: 0"
    )
    status, fields, _framing, length, keep, interim, hop = _fastpath.upstream_parse_head(raw)
    assert (status, length, keep, interim) == (200, 0, True, False)
    kept = [f for f, h in zip(fields, hop, strict=True) if not h]
    assert kept == _downstream(fields)[0]


def test_an_oversized_head_in_pieces_is_broken() -> None:
    pool = Pool(Upstream("http", "127.0.0.1", 9), 4, 1.0)
    conn = COMPILED(pool)
    conn.connection_made(_Transport())
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    for _ in range(70):
        conn.data_received(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        if conn.error is not None:
            break
    assert isinstance(conn.error, UpstreamBroken) and not conn.keep


class _Sink((COMPILED and _fastpath.UpstreamSink) or object):  # type: ignore[misc]
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_head(self, conn: Any, status: int, headers: list[tuple[str, str]]) -> None:
        self.events.append(("head", status, headers))

    def on_body(self, conn: Any, data: bytes) -> None:
        self.events.append(("body", data))

    def on_done(self, conn: Any) -> None:
        self.events.append(("done", conn.keep))

    def on_error(self, conn: Any, error: Exception, stale: bool) -> None:
        self.events.append(("error", type(error).__name__, stale))


def _sink_run(pieces: list[bytes], lost: bool = False) -> tuple[_Sink, Pool, Any]:
    pool = Pool(Upstream("http", "127.0.0.1", 9), 4, 1.0)
    conn = COMPILED(pool)
    conn.connection_made(_Transport())
    sink = _Sink()

    async def go() -> None:
        conn.request(b"GET / HTTP/1.1\r\n\r\n", False, sink)
        for p in pieces:
            conn.data_received(p)
        if lost:
            conn.connection_lost(None)

    asyncio.run(go())
    return sink, pool, conn


def test_sink_gets_head_body_pieces_and_done_with_the_connection_kept() -> None:
    sink, pool, conn = _sink_run(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"2\r\nde\r\n0\r\n\r\n",
        ]
    )
    assert sink.events == [
        ("head", 200, [("Transfer-Encoding", "chunked")]),
        ("body", b"abc"),
        ("body", b"de"),
        ("done", True),
    ]
    assert pool.idle == [conn]


def test_sink_hears_a_stale_kept_connection() -> None:
    sink, pool, _ = _sink_run([], lost=True)
    assert sink.events == [("error", "UpstreamBroken", True)]
    assert pool.idle == []
    sink, _, _ = _sink_run([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"], lost=True)
    assert sink.events[-1] == ("error", "UpstreamBroken", False)
