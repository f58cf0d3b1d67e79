"""A client that resets its connection (SO_LINGER {1, 0}: an RST instead of a FIN) is let go
of promptly, over HTTP and HTTPS, with the compiled lanes and their twins, also when the
connection was not watching its socket (its last request is being answered): the sweep's
probe (meshkit.web.lifecycle.Lifecycle.probe) sees the reset; a client that only half-closes
still gets its response."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshkit._ext import load_fastpath
from meshkit.web import server, tlssock
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.message import Headers, Request, Response
from meshkit.web.tlsctx import build_listener
from support.httpserver_util import Reader, ServerThread, connect
from support.polling import wait_until
from support.tlscerts import issue, make_ca

N = 8  # connections reset per test
SLOW = 60.0  # seconds a slow handler would take: far past the test's wait

_fastpath = load_fastpath()
HAVE_C = _fastpath is not None and hasattr(_fastpath, "send_head_and_file")
HAVE_TLS_LANE = tlssock._TLS_LANE is not None


class Handlers:
    """/slow waits SLOW seconds (counting the handlers cancelled), /late answers after a
    moment, anything else at once."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = 0

    def __call__(self, request: Request) -> object:
        if request.path == "/slow":
            return self._slow()
        if request.path == "/late":
            return self._late()
        return _text(b"hi")

    async def _slow(self) -> Response:
        self.started += 1
        try:
            await asyncio.sleep(SLOW)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return _text(b"late")

    async def _late(self) -> Response:
        await asyncio.sleep(1.5)  # past one probe of the sweep
        return _text(b"answered")


def _text(body: bytes) -> Response:
    return Response(200, Headers([("Content-Type", "text/plain")]), body)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    tmp = tmp_path_factory.mktemp("resets")
    cert, key = issue(make_ca(tmp), tmp, "site", ["a.test"])
    return build_listener([(["a.test"], TLSConfig(pairs=[(str(cert), str(key))]))]).context


_NOT_BUILT = "the compiled extensions are not built (or MESHKIT_NO_EXTENSIONS=1)"
MODES = [
    pytest.param("http-c", marks=pytest.mark.skipif(not HAVE_C, reason=_NOT_BUILT)),
    "http-py",
    pytest.param("https-lane", marks=pytest.mark.skipif(not HAVE_TLS_LANE, reason=_NOT_BUILT)),
    "https-twin",
]


@pytest.fixture(params=MODES)
def site(
    request: pytest.FixtureRequest,
    tls_context: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[tuple[ServerThread, Handlers, Callable[[], socket.socket]]]:
    mode = str(request.param)
    handlers = Handlers()
    if mode.startswith("https"):
        if mode == "https-twin":
            monkeypatch.setattr(server, "TlsSocket", tlssock.PyTlsSocket)
        srv = ServerThread(handlers, compiled=mode == "https-lane", tls=tls_context)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE

        def dial() -> socket.socket:
            return client.wrap_socket(connect(srv.port), server_hostname="a.test")

    else:
        srv = ServerThread(handlers, compiled=mode == "http-c")

        def dial() -> socket.socket:
            return connect(srv.port)

    yield srv, handlers, dial
    srv.stop()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _open(srv: ServerThread) -> int:
    return srv.run(lambda: srv.server.open_connections)


def test_reset_while_the_last_request_is_answered_closes_the_connection(site: tuple) -> None:
    """Connection: close stops reading after the head: only the probe can see the reset.
    The connection goes, and so does its handler (cancelled, not left to run SLOW s)."""
    srv, handlers, dial = site
    socks = [dial() for _ in range(N)]
    for sock in socks:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert wait_until(lambda: handlers.started == N)
    assert _open(srv) == N
    for sock in socks:
        _reset(sock)
    assert wait_until(lambda: _open(srv) == 0, timeout=10), f"{_open(srv)} still open"
    assert wait_until(lambda: handlers.cancelled == N), handlers.cancelled


def test_reset_of_idle_and_waiting_connections_closes_them(site: tuple) -> None:
    """Idle keep-alive connections, partial heads and keep-alive requests being answered."""
    srv, _, dial = site
    socks = []
    for i in range(N):
        sock = dial()
        if i % 3 == 0:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert Reader(sock).response().body == b"hi"
        elif i % 3 == 1:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        else:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        socks.append(sock)
    assert wait_until(lambda: _open(srv) == N)
    for sock in socks:
        _reset(sock)
    assert wait_until(lambda: _open(srv) == 0, timeout=10), f"{_open(srv)} still open"


def test_a_half_closed_client_still_gets_its_response(site: tuple) -> None:
    """A FIN after the last request is no reset: the probe leaves the connection be."""
    srv, _, dial = site
    sock = dial()
    try:
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        if isinstance(sock, ssl.SSLSocket):
            raw = socket.socket(fileno=sock.fileno())  # FIN without close_notify
            raw.shutdown(socket.SHUT_WR)
            raw.detach()
        else:
            sock.shutdown(socket.SHUT_WR)
        reply = Reader(sock).response()
    finally:
        sock.close()
    assert reply.status == 200 and reply.body == b"answered"
    assert wait_until(lambda: _open(srv) == 0, timeout=10)


def test_a_reset_the_loop_did_not_report_still_closes_the_connection(site: tuple) -> None:
    """Where libuv stops a poll handle on POLLERR without calling the reader (uvloop then
    drops the watch), the connection still believes it reads: that state is made here by
    taking the loop's watch off the socket behind the connection's back; the probe runs the
    reader, which sees the reset."""
    srv, _, dial = site
    socks = [dial() for _ in range(N)]
    for sock in socks:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert Reader(sock).response().body == b"hi"
    assert wait_until(lambda: _open(srv) == N)

    def unwatch() -> int:
        conns = list(srv.server._conns)
        for conn in conns:
            assert conn._reading
            srv.loop.remove_reader(conn._fd)
        return len(conns)

    assert srv.run(unwatch) == N
    for sock in socks:
        _reset(sock)
    assert wait_until(lambda: _open(srv) == 0, timeout=10), f"{_open(srv)} still open"
