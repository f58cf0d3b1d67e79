"""The head lane on real sockets: a server whose connections read heads with the compiled
scanner, with its pure-Python twin, or without the lane (httptools alone, as before) must
answer the same bytes the same way, whole or split into 1-byte reads, pipelined or not."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshkit._ext import load_fastpath
from meshkit.web import headlane, headparse
from meshkit.web.message import Headers, Request, Response
from support.httpserver_util import Reader, ServerThread, connect

_fastpath = load_fastpath()
_C_SCAN = getattr(_fastpath, "scan_head", None) if _fastpath is not None else None
LANES = [
    pytest.param("c", marks=pytest.mark.skipif(_C_SCAN is None, reason="not built")),
    pytest.param("python"),
]
_SCANS: dict[str, Any] = {"c": _C_SCAN, "python": headparse.scan_head, "off": None}


def _record(seen: list[tuple[object, ...]]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        if request.method == "POST":
            return Response(200, Headers([("X-Path", request.path)]), b"posted")
        seen.append(
            (
                request.method,
                request.uri,
                request.path,
                request.query,
                request.version,
                list(request.headers),
                request.host,
            )
        )
        body = f"{request.method} {request.path} {request.query}".encode()
        return Response(200, Headers([("X-Path", request.path)]), body)

    return handler


class _Servers:
    """One server per scanner (the lane under test, and the lane off), recording requests."""

    def __init__(self, lane: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> None:
        self.threads: dict[str, ServerThread] = {}
        self.taken = 0  # heads the lane dispatched
        self.seen: dict[str, list[tuple[object, ...]]] = {}
        self.monkeypatch = monkeypatch
        for name in (lane, "off"):
            self.seen[name] = []
            self.threads[name] = ServerThread(_record(self.seen[name]), **kwargs)

    def exchange(self, name: str, raw: bytes, step: int = 0) -> bytes:
        """Send raw (in pieces of `step` bytes) to the server of `name`; all it answers."""
        # connections take the scanner when they are accepted
        scan = _SCANS[name]
        if scan is not None:
            scan = self._counting(scan)
        self.monkeypatch.setattr(headlane, "SCAN", scan)
        with connect(self.threads[name].port) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if step:
                for i in range(0, len(raw), step):
                    sock.sendall(raw[i : i + step])
                    time.sleep(0.001)
            else:
                sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            reader = Reader(sock)
            while reader._fill():
                pass
            return _without_dates(reader.buf)

    def _counting(self, scan: Any) -> Any:
        def counted(*args: Any) -> Any:
            res = scan(*args)
            if type(res) is tuple:
                self.taken += 1
            return res

        return counted

    def stop(self) -> None:
        for st in self.threads.values():
            st.stop()


def _without_dates(data: bytes) -> bytes:
    return b"\r\n".join(
        line for line in data.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


@pytest.fixture(params=LANES)
def servers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Servers]:
    s = _Servers(str(request.param), monkeypatch, max_fields=8, max_field_line=200)
    yield s
    s.stop()


def _lane(s: _Servers) -> str:
    return next(name for name in s.threads if name != "off")


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: t.example\r\nX-A: \xe9\r\n\r\n"
    b"HEAD /b HTTP/1.1\r\nHost: t.example\r\n\r\n"
    b"POST /p HTTP/1.1\r\nHost: t.example\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /c%20d HTTP/1.1\r\nHost: t.example\r\n\r\n"
    b"POST /q HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n"
    b"OPTIONS * HTTP/1.1\r\nHost: t.example\r\n\r\n"
    b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /last HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n"
    b"GET /never HTTP/1.1\r\nHost: t.example\r\n\r\n"
)


@pytest.mark.parametrize("step", [0, 1, 7])
def test_pipelined_reads_answer_alike(servers: _Servers, step: int) -> None:
    lane = _lane(servers)
    got = servers.exchange(lane, PIPELINE, step)
    want = servers.exchange("off", PIPELINE, step)
    assert got == want
    assert got.count(b"HTTP/1.1 200 ") == 8 and b"/never" not in got
    if not step:  # GET /a, HEAD /b, then, after the bodies httptools reads, /e and /last
        assert servers.taken >= 2
    assert servers.seen[lane] == servers.seen["off"]
    assert [r[2] for r in servers.seen[lane]] == ["/a", "/b", "/c d", "*", "/e", "/last"]


REFUSED = [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: nothing\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-L: " + b"a" * 300 + b"\r\n\r\n",
]


@pytest.mark.parametrize("index", range(len(REFUSED)))
def test_refusals_answer_alike(servers: _Servers, index: int) -> None:
    """A good request, then a malformed one, then one that must never be answered."""
    raw = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n" + REFUSED[index] + b"GET /never HTTP/1.1\r\n\r\n"
    lane = _lane(servers)
    for step in (0, 1):
        got = servers.exchange(lane, raw, step)
        assert got == servers.exchange("off", raw, step)
        assert got.startswith(b"HTTP/1.1 200 ") and b"/never" not in got
        status = got.split(b"HTTP/1.1 ")[2][:3]
        assert servers.taken >= 1 or step
        assert status in (b"400", b"417", b"431", b"505"), got
    assert servers.seen[lane] == servers.seen["off"]


def test_lane_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled scanner by default, none without the extension, the twin when asked."""
    monkeypatch.delenv("MESHKIT_NO_EXTENSIONS", raising=False)
    monkeypatch.setenv("MESHKIT_HEAD_LANE", "")
    built = load_fastpath()  # the extension, now that MESHKIT_NO_EXTENSIONS is unset
    assert headlane._from_env() is getattr(built, "scan_head", None)  # None: not built
    monkeypatch.setenv("MESHKIT_HEAD_LANE", "0")
    assert headlane._from_env() is None
    monkeypatch.setenv("MESHKIT_HEAD_LANE", "python")
    assert headlane._from_env() is headparse.scan_head
    monkeypatch.setenv("MESHKIT_HEAD_LANE", "")
    monkeypatch.setenv("MESHKIT_NO_EXTENSIONS", "1")
    assert headlane._from_env() is None
