"""The HTTP/1.1 server on real sockets: raw clients for framing and errors, curl and wrk for
the rest; every test runs with the compiled send path and with its pure-Python twin."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from meshkit._ext import load_fastpath
from meshkit.base.errors import MeshkitError
from meshkit.web.message import (
    BodyTooLarge,
    FileBody,
    Headers,
    Request,
    Response,
)
from meshkit.web.server import HttpServer
from support import httpserver_util
from support.httpserver_util import (
    HOST,
    Reader,
    ServerThread,
    connect,
    get,
    request,
)
from support.polling import wait_until

_fastpath = load_fastpath()
HAVE_C = _fastpath is not None and hasattr(_fastpath, "send_head_and_file")

IMPLS = [
    pytest.param(True, id="c", marks=pytest.mark.skipif(not HAVE_C, reason="not built")),
    pytest.param(False, id="py"),
]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture(params=IMPLS)
def compiled(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def serve(compiled: bool) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(handler: Callable[[Request], object], **kwargs: object) -> ServerThread:
        st = ServerThread(handler, compiled=compiled, **kwargs)  # type: ignore[arg-type]
        assert st.server.compiled is compiled
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


def text(body: str, status: int = 200) -> Response:
    return Response(status, Headers([("Content-Type", "text/plain")]), body.encode())


def echo_path(request: Request) -> Response:
    return text(f"{request.method} {request.path} {request.query} {request.host}")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60, check=False)


# ------------------------------------------------------------------ basics


def test_get_head_and_fields(serve: Callable[..., ServerThread]) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return text("hello")

    st = serve(handler)
    reply, closed = request(st.port, get("/a%20b/c?x=1", extra="X-Test: yes\r\n"))
    assert (reply.status, reply.body) == (200, b"hello")
    assert reply.header("Server") == "meshkit"
    assert reply.header(
        "Date",
    ) is not None and reply.header("Date").endswith("GMT")  # type: ignore[union-attr]
    assert reply.header("Content-Length") == "5"
    assert not closed
    req = seen[0]
    assert (req.method, req.uri, req.path, req.query) == ("GET", "/a%20b/c?x=1", "/a b/c", "x=1")
    assert (req.version, req.host, req.scheme) == ("1.1", "t.example", "http")
    assert req.headers.get("x-test") == "yes"
    assert req.remote_addr == HOST and req.remote_port > 0
    assert (req.server_addr, req.server_port) == (HOST, st.port)
    assert abs(req.start_time - time.time()) < 3600

    head, _ = request(st.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == "5" and head.body == b""


def test_server_field_kept_replaced_or_omitted(serve: Callable[..., ServerThread]) -> None:
    """The server adds `Server: meshkit` only when the response has no Server field; a Server
    field set to "" (what `header / -Server` sets) means none is sent at all."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed"

    def handler(request: Request) -> Response:
        h = Headers([("Content-Type", "text/plain")])
        if request.path.startswith("/other"):
            h.set("Server", "other")
        elif request.path.startswith("/none"):
            h.set("Server", "")
        body: bytes | AsyncIterator[bytes] = b"x"
        if request.path.endswith("/stream"):
            body = chunks()
        return Response(200, h, body)

    st = serve(handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for path, want in [
            ("/", ["meshkit"]),
            ("/other", ["other"]),
            ("/none", []),
            ("/none/stream", []),
            ("/other/stream", ["other"]),
            ("/stream", ["meshkit"]),
        ]:
            for method in ("GET", "HEAD"):
                sock.sendall(get(path).replace(b"GET", method.encode(), 1))
                reply = reader.response(method=method)
                assert reply.status == 200
                got = [v for k, v in reply.headers if k.lower() == "server"]
                assert got == want, (path, method)


def test_absolute_form_host_wins(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path)
    reply, _ = request(st.port, b"GET http://b.example:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.body == b"GET /p q b.example:81"


def test_statuses_without_body(serve: Callable[..., ServerThread]) -> None:
    def handler(request: Request) -> Response:
        status = int(request.path[1:])
        return Response(status, Headers(), b"should not be sent")

    st = serve(handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for status in (204, 304, 200):
            sock.sendall(get(f"/{status}"))
            reply = reader.response()
            assert reply.status == status
            if status == 200:
                assert reply.body == b"should not be sent"
            else:
                assert reply.header("Content-Length") is None


@needs_curl
def test_filebody_sendfile_and_release(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(content)
    released: list[int] = []
    completed: list[int] = []

    def handler(request: Request) -> Response:
        fd = os.open(tmp_path / "big.bin", os.O_RDONLY)

        def release() -> None:
            released.append(fd)
            os.close(fd)

        request.on_complete.append(lambda req, resp, n: completed.append(n))
        off = 100 if request.path == "/part" else 0
        length = 1000 if request.path == "/part" else len(content)
        return Response(200, Headers(), FileBody(fd, off, length, len(content), release=release))

    st = serve(handler)
    out = curl(f"http://{HOST}:{st.port}/big", f"http://{HOST}:{st.port}/part")
    assert out.returncode == 0, out.stderr
    assert (
        hashlib.sha256(out.stdout).digest() == hashlib.sha256(content + content[100:1100]).digest()
    )
    assert wait_until(lambda: len(released) == 2 and len(completed) == 2)
    assert completed == [len(content), 1000]


def test_filebody_with_data_one_send(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    released: list[bool] = []

    def handler(request: Request) -> Response:
        body = FileBody(-1, 0, 5, 5, data=b"cached", release=lambda: released.append(True))
        body.data = b"12345"
        return Response(200, Headers(), body)

    st = serve(handler)
    reply, _ = request(st.port, get())
    assert reply.body == b"12345" and reply.header("Content-Length") == "5"
    assert wait_until(lambda: released == [True])
    reply, _ = request(st.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", method="HEAD")
    assert reply.header("Content-Length") == "5"
    assert wait_until(lambda: released == [True, True])


def test_truncated_file_closes_connection(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100_000)
    released: list[bool] = []
    completed: list[int] = []

    def handler(request: Request) -> Response:
        fd = os.open(path, os.O_RDONLY)

        def release() -> None:
            released.append(True)
            os.close(fd)

        request.on_complete.append(lambda req, resp, n: completed.append(n))
        # The headers promise 200000 bytes; the file has half of them.
        return Response(200, Headers(), FileBody(fd, 0, 200_000, 200_000, release=release))

    st = serve(handler)
    with connect(st.port) as sock:
        sock.sendall(get())
        reader = Reader(sock)
        status, *_ = reader.head()
        assert status == 200
        while reader._fill():
            pass
        assert len(reader.buf) == 100_000  # then the server closed the connection
    assert wait_until(lambda: released == [True])
    assert completed and completed[0] < 200_000
    assert wait_until(lambda: st.server.open_connections == 0)


def test_slow_reader_gets_everything_in_order(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """Responses larger than the socket buffers wait for writability (EAGAIN), in order."""
    big = os.urandom(3_000_000)
    (tmp_path / "f.bin").write_bytes(big[:2_000_000])

    def handler(request: Request) -> Response:
        if request.path == "/file":
            fd = os.open(tmp_path / "f.bin", os.O_RDONLY)
            body = FileBody(fd, 0, 2_000_000, 2_000_000, release=lambda: os.close(fd))
            return Response(200, Headers(), body)
        if request.path == "/small":
            return text("small")
        return Response(200, Headers(), big)

    st = serve(handler)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, st.port))
    with sock:
        sock.sendall(get("/bytes") + get("/file") + get("/small") + get("/bytes"))
        time.sleep(0.2)  # let the server fill the buffers and wait for writability
        reader = Reader(sock)
        assert reader.response().body == big
        assert reader.response().body == big[:2_000_000]
        assert reader.response().body == b"small"
        assert reader.response().body == big


def test_client_that_stops_reading_is_closed(serve: Callable[..., ServerThread]) -> None:
    st = serve(lambda r: Response(200, Headers(), b"x" * 20_000_000), idle_timeout=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, st.port))
    with sock:
        sock.sendall(get())
        assert wait_until(lambda: st.server.open_connections == 0)


# ------------------------------------------------------------------ keep-alive, pipelining


def test_pipelining_order_sync_and_async(serve: Callable[..., ServerThread]) -> None:
    async def slow(request: Request, delay: int) -> Response:
        for _ in range(delay):
            await asyncio.sleep(0)
        await asyncio.sleep(0.001 * delay)
        return text(request.path)

    def handler(request: Request) -> object:
        n = int(request.path[1:])
        if n % 3 == 0:
            return slow(request, 20 - n)  # earlier async requests take longer
        return text(request.path)

    st = serve(handler)
    with connect(st.port) as sock:
        sock.sendall(b"".join(get(f"/{i}") for i in range(12)))
        reader = Reader(sock)
        bodies = [reader.response().body for _ in range(12)]
    assert bodies == [f"/{i}".encode() for i in range(12)]


@pytest.mark.parametrize("seed", range(6))
def test_requests_split_anywhere(serve: Callable[..., ServerThread], seed: int) -> None:
    """Pipelined requests (with bodies, chunked and not) cut at random points arrive in
    separate reads; the answers are the same as for the stream in one piece."""
    import random

    rng = random.Random(seed)
    st = serve(body_handler)
    stream = (
        get("/ignore")
        + b"PUT /a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
        + b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        + get("/ignore", extra="X-Long: " + "y" * 300 + "\r\n")
    )
    cuts = sorted(rng.sample(range(1, len(stream)), 12))
    pieces = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    with connect(st.port) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.002)  # separate reads on the server, most of the time
        reader = Reader(sock)
        bodies = [reader.response().body for _ in range(4)]
    assert bodies == [b"ignored", digest(b"hello world"), digest(b"hello world"), b"ignored"]


def test_connection_close_and_http10(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path)
    reply, closed = request(st.port, get(extra="Connection: close\r\n"))
    assert reply.status == 200 and reply.header("Connection") == "close" and closed
    reply, closed = request(st.port, b"GET / HTTP/1.0\r\n\r\n")
    assert reply.status == 200 and closed
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = reader.response()
            assert reply.header("Connection") == "keep-alive"
    # Requests pipelined after a Connection: close are not answered.
    with connect(st.port) as sock:
        sock.sendall(get("/1", extra="Connection: close\r\n") + get("/2"))
        reader = Reader(sock)
        assert reader.response().body.startswith(b"GET /1")
        assert reader.closed()


def test_response_close(serve: Callable[..., ServerThread]) -> None:
    def handler(request: Request) -> Response:
        r = text("bye")
        r.close = True
        return r

    st = serve(handler)
    reply, closed = request(st.port, get())
    assert reply.header("Connection") == "close" and closed


def test_set_handler_keeps_connections(serve: Callable[..., ServerThread]) -> None:
    st = serve(lambda r: text("old"))
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get())
        assert reader.response().body == b"old"
        st.run(lambda: st.server.set_handler(lambda r: text("new")))
        sock.sendall(get())
        assert reader.response().body == b"new"
        assert st.server.open_connections == 1


# ------------------------------------------------------------------ request bodies


def body_handler(request: Request) -> object:
    async def read() -> Response:
        if request.path == "/limit":
            request.body.limit = 10
        data = await request.body.read_all()
        return text(f"{len(data)} {hashlib.sha256(data).hexdigest()}")

    if request.path == "/ignore":
        return text("ignored")
    return read()


def digest(data: bytes) -> bytes:
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()


def test_content_length_body(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler)
    data = os.urandom(700_000)
    raw = get("/", extra=f"Content-Length: {len(data)}\r\n").replace(b"GET", b"PUT") + data
    reply, closed = request(st.port, raw)
    assert reply.body == digest(data) and not closed


def test_chunked_body(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler)
    chunks = [b"hello", os.urandom(70_000), b"x"]
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"".join(b"%x;ext=1\r\n%b\r\n" % (len(c), c) for c in chunks)
    raw += b"0\r\nTrailer-A: 1\r\n\r\n"
    with connect(st.port) as sock:
        sock.sendall(raw + get("/ignore"))
        reader = Reader(sock)
        assert reader.response().body == digest(b"".join(chunks))
        assert reader.response().body == b"ignored"


def test_unread_body_is_discarded(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler, max_discard=100_000)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            get("/ignore", extra="Content-Length: 5000\r\n") + b"a" * 5000 + get("/ignore")
        )
        assert reader.response().body == b"ignored"
        assert reader.response().body == b"ignored"
        # More than max_discard: the connection closes after the response.
        sock.sendall(get("/ignore", extra="Content-Length: 500000\r\n") + b"a" * 1000)
        reply = reader.response()
        assert reply.body == b"ignored" and reply.header("Connection") == "close"
        assert reader.closed()


def test_async_handler_ignoring_large_body(serve: Callable[..., ServerThread]) -> None:
    """Reading pauses while an unread body fills its buffer; once the response is out the
    rest is discarded and the next request is answered."""

    def handler(request: Request) -> object:
        async def later() -> Response:
            for _ in range(50):
                await asyncio.sleep(0.001)
            return text("late")

        return later() if request.method == "PUT" else text("next")

    st = serve(handler)
    data = b"z" * 600_000
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get(extra=f"Content-Length: {len(data)}\r\n").replace(b"GET", b"PUT"))
        sock.sendall(data + get())
        assert reader.response().body == b"late"
        assert reader.response().body == b"next"


def test_body_with_connection_close(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler)
    raw = b"PUT / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\n"
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(raw)
        sock.sendall(b"ab")
        sock.sendall(b"cde")
        reply = reader.response()
        assert reply.body == digest(b"abcde") and reply.header("Connection") == "close"
        assert reader.closed()


def test_expect_100_continue(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = reader.response()
        assert interim.status == 100
        sock.sendall(b"abcd")
        assert reader.response().body == digest(b"abcd")
        # A handler that never reads: no 100, and the connection closes after the answer.
        sock.sendall(
            b"PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        reply = reader.response()
        assert reply.status == 200 and reply.header("Connection") == "close"
        assert reader.closed()


def test_body_limit_413(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler)
    raw = b"POST /limit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100
    reply, closed = request(st.port, raw)
    assert reply.status == 413 and closed
    # Chunked past the limit.
    raw = b"POST /limit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    reply, closed = request(st.port, raw)
    assert reply.status == 413 and closed
    # Refused on the Content-Length alone, before any 100 Continue.
    with connect(st.port) as sock:
        sock.sendall(
            b"POST /limit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        reply = Reader(sock).response()
        assert reply.status == 413
    # Within the limit.
    reply, _ = request(st.port, b"POST /limit HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert reply.body == digest(b"abc")


def test_sync_handler_raising_body_too_large(serve: Callable[..., ServerThread]) -> None:
    def handler(request: Request) -> Response:
        raise BodyTooLarge(1)

    st = serve(handler)
    reply, closed = request(st.port, get())
    assert reply.status == 413 and closed


# ------------------------------------------------------------------ refusals


MALFORMED = {
    "garbage": b"\x01\x02 nonsense\r\n\r\n",
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"
    b"\r\n\r\n0\r\n\r\n",
    "dup_cl_differing": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4"
    b"\r\n\r\nabcd",
    "dup_cl_same": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3"
    b"\r\n\r\nabc",
    "cl_list": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl_negative": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
    "te_not_chunked_last": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity"
    b"\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "nul_encoded": b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
    "not_utf8": b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: x\n\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_400(serve: Callable[..., ServerThread], name: str) -> None:
    called: list[str] = []

    def handler(request: Request) -> Response:
        called.append(request.path)
        return text("reached")

    st = serve(handler)
    reply, closed = request(st.port, MALFORMED[name])
    assert reply.status == 400, reply
    assert closed
    assert reply.header("Connection") == "close"
    assert reply.body == b"400 Bad Request\n"
    assert called == []


def test_http_version_505(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path)
    reply, closed = request(st.port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    assert reply.status == 505 and closed


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"ffffffffffffffffff\r\n",  # overflow
        b"3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after the data
    ],
)
def test_bad_chunks_close(serve: Callable[..., ServerThread], body: bytes) -> None:
    st = serve(body_handler)
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with connect(st.port) as sock:
        sock.sendall(raw + get("/ignore"))
        sock.settimeout(10)
        reader = Reader(sock)
        # The handler was dispatched with the head; its body read fails and the connection
        # closes: no response to the smuggled request after it.
        data = b""
        while reader._fill():
            pass
        data = reader.buf
    assert b"ignored" not in data


def test_header_limit_431(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path, header_limit=4096)
    reply, closed = request(st.port, get(extra="X-Big: " + "a" * 5000 + "\r\n"))
    assert reply.status == 431 and closed
    many = "".join(f"X-{i}: {'b' * 50}\r\n" for i in range(100))
    reply, closed = request(st.port, get(extra=many))
    assert reply.status == 431 and closed
    # A header field that never ends, sent in pieces (the server may see up to one read of
    # 64 KiB past the limit before it notices a field still incomplete).
    with connect(st.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(600):
            try:
                sock.sendall(b"c" * 1000)
            except OSError:
                break
        reply = Reader(sock).response()
        assert reply.status == 431
    reply, _ = request(st.port, get(extra="X-Ok: " + "a" * 3000 + "\r\n"))
    assert reply.status == 200


def test_header_timeout_408(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path, header_timeout=0.3)
    with connect(st.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        reply = Reader(sock).response()
        assert reply.status == 408 and reply.header("Connection") == "close"
        assert Reader(sock).closed()
    # A connection that sends nothing is closed without a response.
    with connect(st.port) as sock:
        assert sock.recv(100) == b""


def test_idle_timeout_closes(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path, idle_timeout=0.3)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get())
        assert reader.response().status == 200
        assert reader.closed()
    assert wait_until(lambda: st.server.open_connections == 0)


def test_read_timeout_closes(serve: Callable[..., ServerThread]) -> None:
    st = serve(body_handler, read_timeout=0.3)
    with connect(st.port) as sock:
        sock.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert Reader(sock).closed()


def test_handler_exception_500(
    serve: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    def handler(request: Request) -> object:
        if request.path == "/async":

            async def fail() -> Response:
                raise RuntimeError("secret async detail")

            return fail()
        raise RuntimeError("secret detail")

    st = serve(handler)
    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        for path in ("/sync", "/async"):
            reply, closed = request(st.port, get(path))
            assert reply.status == 500 and not closed
            assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert wait_until(
        lambda: sum("secret" in r.exc_text for r in caplog.records if r.exc_text) == 2
    )
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.name == "meshkit.web")


# ------------------------------------------------------------------ streaming


async def agen(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def test_async_iterator_bodies(serve: Callable[..., ServerThread]) -> None:
    parts = [b"one", b"", os.urandom(200_000), b"three"]
    completed: list[int] = []

    def handler(request: Request) -> Response:
        request.on_complete.append(lambda req, resp, n: completed.append(n))
        return Response(200, Headers([("Content-Length", "999")]), agen(parts))

    st = serve(handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get() + get())
        for _ in range(2):
            reply = reader.response()
            assert reply.header("Transfer-Encoding") == "chunked"
            assert reply.header("Content-Length") is None
            assert reply.body == b"".join(parts)
    reply, closed = request(st.port, b"GET / HTTP/1.0\r\n\r\n")
    assert reply.body == b"".join(parts) and closed
    reply, _ = request(st.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", method="HEAD")
    assert reply.status == 200 and reply.body == b""
    assert wait_until(lambda: len(completed) == 4)
    assert completed[:3] == [sum(map(len, parts))] * 3


# ------------------------------------------------------------------ lifecycle


def test_graceful_shutdown(serve: Callable[..., ServerThread]) -> None:
    gate: list[asyncio.Event] = []

    def handler(request: Request) -> object:
        if request.path != "/slow":
            return text("fast")

        async def slow() -> Response:
            await gate[0].wait()
            return text("slow done")

        return slow()

    st = serve(handler)
    st.run(lambda: gate.append(asyncio.Event()))
    idle = connect(st.port)
    idle_reader = Reader(idle)
    idle.sendall(get("/"))
    assert idle_reader.response().body == b"fast"
    busy = connect(st.port)
    busy.sendall(get("/slow"))
    assert wait_until(lambda: st.server.open_connections == 2)
    time.sleep(0.05)  # let the slow request reach its handler
    done = st.submit(st.server.shutdown(10.0))
    # The idle keep-alive connection closes at once, new connections are refused.
    assert idle_reader.closed()
    assert wait_until(lambda: not st.server.addresses())
    with pytest.raises(OSError):
        connect(st.port, timeout=2).close()
    assert not done.done()
    st.run(gate[0].set)
    reply = Reader(busy).response()
    assert reply.body == b"slow done" and reply.header("Connection") == "close"
    done.result(10)
    assert st.server.open_connections == 0
    idle.close()
    busy.close()


def test_shutdown_grace_expires(serve: Callable[..., ServerThread]) -> None:
    def handler(request: Request) -> object:
        async def never() -> Response:
            await asyncio.Event().wait()
            raise AssertionError

        return never()

    st = serve(handler)
    with connect(st.port) as sock:
        sock.sendall(get())
        assert wait_until(lambda: st.server.open_connections == 1)
        st.call(st.server.shutdown(0.2))
        assert Reader(sock).closed()
    assert st.server.open_connections == 0


def test_listen_errors_and_addresses(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path)
    with pytest.raises(MeshkitError, match=f"127.0.0.1:{st.port}"):
        st.call(st.server.listen(HOST, st.port))
    sock = socket.socket()
    sock.bind((HOST, 0))
    st.call(st.server.listen(HOST, 0, sock=sock))
    ports = [p for _, p in st.server.addresses()]
    assert len(ports) == 2
    for port in ports:
        assert request(port, get())[0].status == 200


def test_many_connections_close_now(serve: Callable[..., ServerThread]) -> None:
    st = serve(echo_path)
    socks = [connect(st.port) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(get())
            assert Reader(s).response().status == 200
        assert wait_until(lambda: st.server.open_connections == 20)
        st.run(st.server.close_now)
        assert st.server.open_connections == 0
        for s in socks:
            s.settimeout(5)
            assert s.recv(10) == b""
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------ real clients


@needs_curl
def test_curl_keepalive_and_upload(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    st = serve(body_handler)
    data = os.urandom(2 * 1024 * 1024)
    (tmp_path / "up.bin").write_bytes(data)
    url = f"http://{HOST}:{st.port}/"
    # curl sends Expect: 100-continue for a large upload.
    out = curl("-T", str(tmp_path / "up.bin"), url)
    assert out.returncode == 0, out.stderr
    assert digest(data) in out.stdout
    out = curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + str(tmp_path / "up.bin"), url
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == digest(data)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_no_errors(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(b"x" * 120)
    from support.httpserver_util import cached_file_handler

    st = serve(cached_file_handler(tmp_path))
    out = subprocess.run(
        ["wrk", "-t1", "-c16", "-d1s", f"http://{HOST}:{st.port}/index.html"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Socket errors" not in out.stdout and "Non-2xx" not in out.stdout, out.stdout
    assert "Requests/sec" in out.stdout


@needs_curl
def test_child_process_both_send_paths(
    fastpath_env: dict[str, str], spawn: Callable[..., object], tmp_path: Path
) -> None:
    from support.peers import free_port, wait_tcp

    content = os.urandom(1 << 20)
    (tmp_path / "big.bin").write_bytes(content)
    (tmp_path / "index.html").write_bytes(b"<p>hi</p>\n")
    port = free_port()
    proc = spawn(
        [sys.executable, str(httpserver_util.__file__), str(port), str(tmp_path)],
        fastpath_env,
    )
    wait_tcp(port, proc)  # type: ignore[arg-type]
    out = curl(f"http://{HOST}:{port}/big.bin", f"http://{HOST}:{port}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == content + b"<p>hi</p>\n"


def test_open_connections_property() -> None:
    server = HttpServer(echo_path)
    assert server.open_connections == 0
    assert server.addresses() == []
    server.close_now()


def test_future_results_answer_in_order(serve: Callable[..., ServerThread]) -> None:
    """A handler may return a plain asyncio.Future (answered from protocol callbacks): the
    server waits on it without a task, keeps pipelined responses in order, turns an
    exception into 500 and a non-Response into 500."""
    def handler(request: Request) -> object:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[object] = loop.create_future()
        delay = {"/slow": 0.05, "/fast": 0.0}.get(request.path, 0.01)
        if request.path == "/boom":
            loop.call_later(delay, fut.set_exception, RuntimeError("boom"))
        elif request.path == "/notaresponse":
            loop.call_later(delay, fut.set_result, "text")
        else:
            loop.call_later(delay, fut.set_result, text(request.path))
        return fut

    st = serve(handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/slow") + get("/fast") + get("/boom") + get("/notaresponse") + get("/x"))
        assert reader.response().body == b"/slow"
        assert reader.response().body == b"/fast"
        assert reader.response().status == 500
        assert reader.response().status == 500
        assert reader.response().body == b"/x"
