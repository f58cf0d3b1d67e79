"""Requests that close their connection (`Connection: close`, HTTP/1.0 without keep-alive)
answered from the response cache: a new TLS handshake per request (bench/web_tls.py
handshake) no longer runs the handlers each time. The answer is the same as the handlers'
(Connection: close in the head, the connection closed after it, close_notify over TLS, the
same access log line), over plain TCP and TLS, with the compiled readers and their twins."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.web import fileserver, server, tlssock
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.message import Request
from meshkit.web.tlsctx import build_listener
from support.httpserver_util import Reader, ServerThread, connect
from support.polling import wait_until
from support.respcache_lab import HAVE_C
from support.tlscerts import issue, make_ca

OLD = 1_600_000_000
TLS_MODES = ["lane", "twin"] if tlssock._TLS_LANE is not None else ["twin"]
MODES = [*(["plain-c"] if HAVE_C else []), "plain-py", *(f"tls-{m}" for m in TLS_MODES)]
CLOSE = b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
OLD_HTTP = b"GET /a.txt HTTP/1.0\r\nHost: a.test\r\n\r\n"


class Counting:
    """A port's Router, counting the requests that reach it (a cache hit does not)."""

    validated_responses = True

    def __init__(self, router: Any) -> None:
        self.router = router
        self.calls = 0

    def __call__(self, req: Request) -> object:
        self.calls += 1
        return self.router(req)


@pytest.fixture(autouse=True)
def _fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    tmp = tmp_path_factory.mktemp("closecache")
    cert, key = issue(make_ca(tmp), tmp, "site", ["a.test"])
    listener = build_listener([(["a.test"], TLSConfig(pairs=[(str(cert), str(key))]))])
    return listener.context


def _site(tmp_path: Path, extra: str = "") -> tuple[Counting, Path]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"plain")
    for p in (www / "a.txt", www):
        os.utime(p, (OLD, OLD))
    text = f":8000 {{\n root {www}\n{extra}}}\n"
    return Counting(plan(load_text(text, "Caddyfile"))[8000].router()), www


Start = Callable[[Counting], ServerThread]


@pytest.fixture(params=MODES)
def start(
    request: pytest.FixtureRequest, tls_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Start, Callable[[int], socket.socket]]]:
    mode: str = request.param
    started: list[ServerThread] = []
    if mode == "tls-twin":
        monkeypatch.setattr(server, "TlsSocket", tlssock.PyTlsSocket)

    def go(router: Counting) -> ServerThread:
        if mode.startswith("tls"):
            st = ServerThread(router, compiled=mode == "tls-lane", tls=tls_context)
        else:
            st = ServerThread(router, compiled=mode == "plain-c")
        started.append(st)
        return st

    def client(port: int) -> socket.socket:
        sock = connect(port)
        if not mode.startswith("tls"):
            return sock
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname="a.test")

    yield go, client
    for st in started:
        st.stop()


def _one(client: Callable[[int], socket.socket], port: int, raw: bytes) -> Any:
    """One request on a new connection; the reply, after checking the server closed."""
    with client(port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        reply = reader.response()
        assert reader.closed()
    return reply


@pytest.mark.parametrize("raw", [CLOSE, OLD_HTTP], ids=["close", "http10"])
def test_closing_requests_are_answered_from_the_cache(
    start: Any, tmp_path: Path, raw: bytes
) -> None:
    go, client = start
    router, www = _site(tmp_path)
    st = go(router)
    replies = [_one(client, st.port, raw) for _ in range(3)]
    assert router.calls == 1  # the repeats came from the cache
    assert [r.body for r in replies] == [b"plain"] * 3
    assert {r.header("Connection") for r in replies} == {"close"}
    first, last = replies[0], replies[-1]
    assert [h for h in first.headers if h[0] != "Date"] == [
        h for h in last.headers if h[0] != "Date"
    ]
    # a changed file: the handlers again, then remembered anew
    (www / "a.txt").write_bytes(b"changed")
    assert _one(client, st.port, raw).body == b"changed"
    assert _one(client, st.port, raw).body == b"changed"
    assert router.calls == 2
    assert wait_until(lambda: st.server.open_connections == 0)


def test_keep_alive_and_closing_heads_are_apart(start: Any, tmp_path: Path) -> None:
    """The same path asked with and without `Connection: close`: each its own entry, and a
    kept connection stays open after a cached answer while a closing one closes."""
    go, client = start
    router, _ = _site(tmp_path)
    st = go(router)
    keep = b"GET /a.txt HTTP/1.1\r\nHost: a.test\r\n\r\n"
    assert _one(client, st.port, CLOSE).header("Connection") == "close"
    with client(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(keep)
            reply = reader.response()
            assert reply.body == b"plain" and reply.header("Connection") is None
        sock.sendall(CLOSE)  # from the cache, on a kept connection: closes it
        assert reader.response().header("Connection") == "close"
        assert reader.closed()
    assert router.calls == 2


def test_closing_hits_write_the_same_log_line(start: Any, tmp_path: Path) -> None:
    go, client = start
    logfile = tmp_path / "access.log"
    router, _ = _site(tmp_path, f' log / {logfile} "{{method}} {{uri}} {{status}} {{size}}"\n')
    st = go(router)
    for _ in range(3):
        assert _one(client, st.port, CLOSE).body == b"plain"
    assert router.calls == 1
    assert wait_until(lambda: logfile.exists() and logfile.read_text().count("\n") == 3)
    assert logfile.read_text().splitlines() == ["GET /a.txt 200 5"] * 3


def test_a_closing_head_with_a_pipelined_one_is_answered_once(start: Any, tmp_path: Path) -> None:
    """A closing request with another one behind it in the same read: the first is
    answered and the connection closed, the second never answered (as without the cache),
    however often the same bytes are sent."""
    go, client = start
    router, _ = _site(tmp_path)
    st = go(router)
    raw = CLOSE + b"GET /b.txt HTTP/1.1\r\nHost: a.test\r\n\r\n"
    for _ in range(3):
        with client(st.port) as sock:
            sock.sendall(raw)
            reader = Reader(sock)
            assert reader.response().body == b"plain"
            assert reader.closed()
    # the same bytes ask the same: remembered with the first answer, like a lone head
    assert router.calls == 1


def test_a_closing_hit_closes_without_waiting_for_the_client(start: Any, tmp_path: Path) -> None:
    """nginx's `lingering_close on`: a closing request read whole (a cache hit: the read
    was exactly its head) with no input behind it is closed right after the shutdown (or
    close_notify), not kept until the client closes its side or the linger ends."""
    go, client = start
    router, _ = _site(tmp_path)
    st = go(router)
    _one(client, st.port, CLOSE)  # remembered
    with client(st.port) as sock:
        sock.sendall(CLOSE)
        reader = Reader(sock)
        assert reader.response().body == b"plain"
        assert reader.closed()
        # the client still holds its side open: the server is done with it regardless
        assert wait_until(lambda: st.server.open_connections == 0, timeout=1.5)
    assert router.calls == 1


def test_a_closing_answer_with_input_behind_it_lingers(start: Any, tmp_path: Path) -> None:
    """A closing request with more input behind it (here a pipelined head in the same
    read): the connection lingers, discarding input, so that a reset does not destroy the
    answer at the client (RFC 9112 9.6); it goes once the client closes."""
    go, client = start
    router, _ = _site(tmp_path)
    st = go(router)
    raw = CLOSE + b"GET /b.txt HTTP/1.1\r\nHost: a.test\r\n\r\n"
    with client(st.port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        assert reader.response().body == b"plain"
        assert reader.closed()
        assert st.server.open_connections == 1  # lingering (2 s at most)
        with contextlib.suppress(OSError):
            sock.sendall(b"more input is discarded, not answered with a reset")
        assert st.server.open_connections == 1
    assert wait_until(lambda: st.server.open_connections == 0)
