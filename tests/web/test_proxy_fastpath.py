"""The proxy's synchronous fast path (a request without a body sent at once on a kept
upstream connection) at its edges, against a scripted raw-socket backend: a kept connection
the upstream closes, garbage, timeouts, large responses, pipelining, and the Deadlines sweep."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.web.message import Headers, Request
from meshkit.web.proxy.client import Pool, _Conn, _simple_head
from meshkit.web.proxy.deadlines import Deadlines
from meshkit.web.proxy.upstream import Upstream
from support.webproxy import _close, _proxy

BIG = 3_000_000


class Backend:
    """An HTTP/1.1 backend on raw sockets whose answer depends on the path (and on how many
    requests its connection has carried): /ok, /slow, /garbage, /big, /delay/MS, and
    /drop-second (answered on a fresh connection, dropped unanswered on a kept one)."""

    def __init__(self) -> None:
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self.socks: list[socket.socket] = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        served = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                self.requests.append(path)
                served += 1
                if path == "/drop-second" and served > 1:
                    return  # the upstream closed the kept connection as the request came
                if path == "/garbage":
                    conn.sendall(b"this is not HTTP at all\r\n\r\n")
                    return
                if path == "/slow":
                    time.sleep(3)
                elif path.startswith("/delay/"):
                    time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
                body = b"y" * BIG if path == "/big" else f"ok {path}".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                    % len(body)
                    + body
                )
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.lsock.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    try:
        yield b
    finally:
        b.close()


def _exchange(port: int, raw: bytes, responses: int = 1, timeout: float = 10) -> bytes:
    """Send raw request bytes on one connection; read until `responses` whole responses
    (Content-Length framed) are in."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(raw)
        data = b""
        while True:
            done, pos = 0, 0
            while True:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = data[pos:end].lower()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(data) < end + 4 + length:
                    break
                pos = end + 4 + length
                done += 1
            if done >= responses:
                return data
            chunk = c.recv(1 << 20)
            if not chunk:
                return data
            data += chunk


def _get(port: int, path: str, method: str = "GET") -> bytes:
    return _exchange(port, f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _make(backend: Backend, extra: str = "") -> object:
    return _proxy(f":2015\nproxy / 127.0.0.1:{backend.port} {{\n{extra}}}\n")


def test_kept_connection_reused_by_the_fast_path(backend: Backend) -> None:
    p = _make(backend)
    try:
        for i in range(5):
            reply = _get(p.port, f"/ok{i}")  # type: ignore[attr-defined]
            assert _status(reply) == 200 and reply.endswith(f"ok /ok{i}".encode())
        assert backend.connections == 1

        async def probe() -> tuple[type, int]:
            request = Request("GET", "/ok", "/ok", headers=Headers([("Host", "t")]))
            result = p.server._handler(request)  # type: ignore[attr-defined]
            response = await result
            return type(result), response.status

        # with a kept connection the handler answers through a plain Future (no coroutine)
        kind, status = asyncio.run_coroutine_threadsafe(probe(), p.loop).result(5)  # type: ignore[attr-defined]
        assert issubclass(kind, asyncio.Future) and status == 200
    finally:
        _close(p)  # type: ignore[arg-type]


def test_kept_connection_closed_by_upstream_is_redialled_once(backend: Backend) -> None:
    p = _make(backend)
    try:
        assert _status(_get(p.port, "/drop-second")) == 200  # type: ignore[attr-defined]
        # the kept connection drops this one unanswered: a GET is sent again on a new one
        reply = _get(p.port, "/drop-second")  # type: ignore[attr-defined]
        assert _status(reply) == 200 and reply.endswith(b"ok /drop-second")
        assert backend.connections == 2
        assert backend.requests == ["/drop-second"] * 3
    finally:
        _close(p)  # type: ignore[arg-type]


def test_non_idempotent_request_is_not_sent_twice(backend: Backend) -> None:
    p = _make(backend)
    try:
        assert _status(_get(p.port, "/drop-second", "POST")) == 200  # type: ignore[attr-defined]
        reply = _get(p.port, "/drop-second", "POST")  # type: ignore[attr-defined]
        assert _status(reply) == 502
        assert backend.requests == ["/drop-second"] * 2
    finally:
        _close(p)  # type: ignore[arg-type]


def test_garbage_on_a_kept_connection_is_502(backend: Backend) -> None:
    p = _make(backend)
    try:
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
        assert _status(_get(p.port, "/garbage")) == 502  # type: ignore[attr-defined]
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
    finally:
        _close(p)  # type: ignore[arg-type]


def test_timeout_on_a_kept_connection_is_504(backend: Backend) -> None:
    p = _make(backend, " timeout 500ms\n")
    try:
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
        assert _status(_get(p.port, "/slow")) == 504  # type: ignore[attr-defined]
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
    finally:
        _close(p)  # type: ignore[arg-type]


def test_large_response_falls_back_to_streaming(backend: Backend) -> None:
    p = _make(backend)
    try:
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
        reply = _get(p.port, "/big")  # type: ignore[attr-defined]
        head, _, body = reply.partition(b"\r\n\r\n")
        assert _status(reply) == 200
        assert b"content-length: %d" % BIG in head.lower()
        assert body == b"y" * BIG
        assert _status(_get(p.port, "/ok")) == 200  # type: ignore[attr-defined]
        assert backend.connections == 1  # the streamed exchange gave its connection back
    finally:
        _close(p)  # type: ignore[arg-type]


def test_pipelined_requests_answered_in_order(backend: Backend) -> None:
    p = _make(backend)
    try:
        # keep a few connections: the pipelined requests then all take the fast path
        raw = b"".join(
            b"GET /delay/%d HTTP/1.1\r\nHost: t\r\n\r\n" % ms for ms in (150, 100, 50, 0)
        )
        _exchange(p.port, raw, 4)  # type: ignore[attr-defined]
        reply = _exchange(p.port, raw, 4)  # type: ignore[attr-defined]
        bodies = [part for part in reply.split(b"HTTP/1.1 ")[1:]]
        assert [b.rsplit(b"\r\n\r\n", 1)[1] for b in bodies] == [
            b"ok /delay/150",
            b"ok /delay/100",
            b"ok /delay/50",
            b"ok /delay/0",
        ]
    finally:
        _close(p)  # type: ignore[arg-type]


class _Item:
    def __init__(self) -> None:
        self.deadline = 0.0
        self.timeout = 0.0
        self.timed_out = 0

    def time_out(self) -> None:
        self.timed_out += 1


def test_deadlines_sweep_times_out_only_what_is_late() -> None:
    async def main() -> None:
        d = Deadlines()
        late, early, done = _Item(), _Item(), _Item()
        d.watch(late, 0.05)
        d.watch(early, 30)
        d.watch(done, 0.05)
        d.unwatch(done)
        for _ in range(100):
            if late.timed_out:
                break
            await asyncio.sleep(0.05)
        assert (late.timed_out, early.timed_out, done.timed_out) == (1, 0, 0)
        assert d.watched == {early}
        d.close()
        assert not d.watched

    asyncio.run(main())


# --- the one-read response shortcut against httptools ------------------------------------------

_LINES = st.sampled_from(
    [
        b"Content-Type: text/plain",
        b"Content-Length: 5",
        b"Content-Length: 7",
        b"Content-Length: x",
        b"Content-Length:5",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Connection: Keep-Alive, Close",
        b"X-Spaced:   v  ",
        b"Bad Name: v",
        b"NoColon",
        b" folded",
        b"X-Bare: a\nb",
        b"X-CR: a\rb",
        b"Server: nginx",
        b"Date: Thu, 26 Nov 2026 16:40:00 GMT",
    ]
)
_STATUS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200",
        b"HTTP/1.1 2000 Odd",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 abc X",
    ]
)


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = False
        self.keep = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep = bool(self.parser.should_keep_alive())  # as the client reads it

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


@settings(max_examples=300, deadline=None)
@given(_STATUS, st.lists(_LINES, max_size=5), st.binary(min_size=5, max_size=7))
def test_simple_head_agrees_with_httptools(status: bytes, lines: list[bytes], body: bytes) -> None:
    raw = b"\r\n".join([status, *lines])
    got = _simple_head(raw)
    if got is None:
        return  # left to httptools itself
    code, headers, length, keep = got
    parsed = _Parsed()
    parser = parsed.parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(raw + b"\r\n\r\n" + body[:length])
    assert len(body) >= length or not parsed.complete
    if len(body) < length:
        return
    assert parsed.complete
    assert parser.get_status_code() == code
    assert parsed.headers == headers
    assert parsed.body == body[:length]
    assert parsed.keep == keep


def test_remembered_upstream_heads_are_never_changed() -> None:
    """A head taken whole is shared with later responses: a response the parser reads on
    the same connection must not add its fields to it."""

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    pool = Pool(Upstream("http", "127.0.0.1", 9), 1, 1.0)
    conn = _Conn(pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    head = b"HTTP/1.1 200 OK\r\nX-Shared: 1\r\nContent-Length: 2\r\n\r\n"
    conn.begin(False)
    conn.data_received(head + b"ok")
    shared = conn.headers
    assert conn.done and shared == [("X-Shared", "1"), ("Content-Length", "2")]
    # bytes the upstream sends unasked while the connection is idle go to the parser
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Other: 2\r\nContent-Length: 2\r\n")
    conn.data_received(b"\r\nok")
    assert conn.headers == [("X-Other", "2"), ("Content-Length", "2")]
    assert shared == [("X-Shared", "1"), ("Content-Length", "2")]
    conn.begin(False)
    conn.data_received(head + b"ok")
    assert conn.headers is shared  # taken from memory again
