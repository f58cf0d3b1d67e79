"""The compiled reader of HTTPS connections (meshkit._fastpath.TlsLane, _tls.pxi): repeated
requests answered from the response cache over TLS without a Python frame, the same answers
as its twin (Connection._on_readable over the pure-Python TLS socket), and a closed HTTPS
connection freed without a GC pass."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.web import fileserver, server, tlssock
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.connection import Connection
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.tlsctx import build_listener
from support.httpserver_util import Reader, ServerThread, connect
from support.polling import wait_until
from support.tlscerts import issue, make_ca

OLD = 1_600_000_000
HAVE_LANE = tlssock._TLS_LANE is not None
MODES = ["lane", "twin"] if HAVE_LANE else ["twin"]


@pytest.fixture(autouse=True)
def trust_fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    tmp = tmp_path_factory.mktemp("tlslane")
    cert, key = issue(make_ca(tmp), tmp, "site", ["a.test"])
    listener = build_listener([(["a.test"], TLSConfig(pairs=[(str(cert), str(key))]))])
    return listener.context


@pytest.fixture(params=MODES)
def https(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tls_context: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[ServerThread, Path, bool]]:
    if request.param == "twin":
        monkeypatch.setattr(server, "TlsSocket", tlssock.PyTlsSocket)
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"plain")
    (www / "big.bin").write_bytes(b"x" * 50000)
    for p in (www / "a.txt", www / "big.bin", www):
        os.utime(p, (OLD, OLD))
    router = plan(load_text(f":8000 {{\n root {www}\n}}\n", "Caddyfile"))[8000].router()
    srv = ServerThread(router, compiled=request.param == "lane", tls=tls_context)
    yield srv, www, request.param == "lane"
    srv.stop()


def _client(port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(connect(port), server_hostname="a.test")


def _hits(srv: ServerThread) -> int:
    conns = srv.run(lambda: list(srv.server._conns))
    lanes = [getattr(c, "_lane", None) for c in conns]
    return sum(int(ln.hits) for ln in lanes if ln is not None)


def test_repeats_are_answered_by_the_lane_like_the_twin(https: Any) -> None:
    srv, www, lane = https
    with _client(srv.port) as sock:
        reader = Reader(sock)
        got = []
        for path in ["/a.txt", "/a.txt", "/a.txt", "/big.bin", "/big.bin"]:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
            got.append(reader.response())
        hits = _hits(srv)
        (www / "a.txt").write_bytes(b"changed")  # the entry is stale: the connection reads it
        sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\n\r\n")
        changed = reader.response()
        sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        last = reader.response()
        assert sock.recv(100) == b""  # closed after the response (close_notify)
    assert [r.status for r in got] == [200] * 5
    assert [r.body for r in got] == [b"plain"] * 3 + [b"x" * 50000] * 2
    assert got[2].header("ETag") == got[0].header("ETag")
    assert changed.body == b"changed" and last.body == b"changed"
    # the repeats of /a.txt (twice) and of /big.bin, by the lane; none without it
    assert hits == (3 if lane else 0)
    assert wait_until(lambda: srv.server.open_connections == 0)


def test_closed_https_connections_are_freed_without_the_gc(https: Any) -> None:
    srv, _, _ = https
    for _ in range(3):  # a keep-alive request, then the client's close_notify and FIN
        with _client(srv.port) as sock:
            reader = Reader(sock)
            for _ in range(2):
                sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert reader.response().body == b"plain"
            sock.setblocking(False)  # close_notify, then close at once, as wrk does
            with contextlib.suppress(ssl.SSLError):  # (want-read, or the server gone)
                sock.unwrap()
    assert wait_until(lambda: srv.server.open_connections == 0)
    gc.collect()
    # connections other tests' servers still hold (their loops stopped) are not this one's
    before = {id(o) for o in gc.get_objects() if isinstance(o, Connection)}
    gc.disable()
    try:
        with _client(srv.port) as sock:
            reader = Reader(sock)
            sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            assert reader.response().body == b"plain"
            sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: srv.server.open_connections == 0)
        left = [o for o in gc.get_objects() if isinstance(o, Connection) and id(o) not in before]
        assert left == []  # (with the parser or the lane still held, a cycle kept it)
    finally:
        gc.enable()
