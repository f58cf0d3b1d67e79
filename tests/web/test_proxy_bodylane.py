"""Requests with a small body on the proxy lane (_proxylane.pxi _pl_take_body +
meshkit.web.bodyhead) against its twin, the Python handler chain
(MESHKIT_PROXY_LANE=0 takes the same path): generated POST, PUT and PATCH requests with
bodies of many sizes (1 byte to 64 KiB) on keep-alive connections to two servers over the
same `proxy` + `log` site in front of one real upstream, one server reading with the
compiled lanes and one in Python, get the same statuses, headers (bar Date), bodies and
access-log lines. The upstream echoes the method, the head it got and the body's length and
sha256, so what each server sent upstream is compared too. Heads the lane must leave to the
chain (two Content-Lengths, Content-Length with Transfer-Encoding, Expect, chunked, a body
over 64 KiB, a body that comes in a later read, a pipelined request) are answered the same
by both and not taken. A kept upstream connection that turns out closed is not retried for
a request with a body (the chain's rule: client.may_retry), by either."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import lane
from meshkit.web.app import plan
from meshkit.web.bodyhead import MAX_BODY
from meshkit.web.caddyfile.load import load_text
from meshkit.web.proxy import clientlane
from meshkit.web.router import Router
from support.httpserver_util import Reader, connect
from support.lanediff import Seen, TwinServers

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "proxy_lane_bodies")
pytestmark = pytest.mark.skipif(
    not HAVE_LANE or lane.LANE is None or not clientlane.ENABLED,
    reason="the compiled proxy lane is not built or is off",
)

HOST = "127.0.0.1"


class Echo:
    """An upstream on its own loop: answers the method, the head it got and the body's
    length and sha256 (Content-Length or chunked bodies). /drop/ closes a connection that
    served before without answering (a stale kept connection)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        # a second address, for the block with two upstreams
        self.server2 = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port2 = self.server2.sockets[0].getsockname()[1]

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, HOST, 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served += 1
                method, path = head.split(b" ")[:2]
                fields = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    fields[name.strip().lower()] = value.strip()
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body = b""
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        body += (await reader.readexactly(size + 2))[:-2]
                        if size == 0:  # (no trailers: its CRLF ended the body)
                            break
                else:
                    body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
                if path.startswith(b"/drop/") and served > 1:
                    return  # a kept connection closed unanswered: stale
                out = b"%s\n%s\nlen=%d sha256=%s\n" % (
                    method,
                    head,
                    len(body),
                    hashlib.sha256(body).hexdigest().encode(),
                )
                status = b"201 Created" if path.startswith(b"/made") else b"200 OK"
                writer.write(
                    b"HTTP/1.1 %s\r\nX-Up: yes\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, len(out), out)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except (asyncio.CancelledError, ValueError):
            pass
        finally:
            writer.close()

    async def _shutdown(self) -> None:
        self.server.close()
        self.server2.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# name -> the proxy block (one upstream: the lane's own pick; two: the Picker's)
CONFIGS = {
    "one": " proxy / {up} {{\n  header_upstream X-Lit lit\n }}\n",
    "two": " proxy / {up} {up2} {{\n  policy round_robin\n  header_upstream X-Two 2\n }}\n",
}


def make_router(base: Path, name: str, echo: Echo) -> tuple[Router, Path]:
    logfile = base / "access.log"
    site = CONFIGS[name].format(up=f"{HOST}:{echo.port}", up2=f"{HOST}:{echo.port2}")
    site += f' log / {logfile} "{{method}} {{uri}} {{status}} {{size}} {{>Content-Length}}"\n'
    router = plan(load_text(f":8000 {{\n{site}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return router, logfile


class Pair(TwinServers):
    """The same site on a compiled server and a Python one."""

    def __init__(self, base: Path, name: str, echo: Echo) -> None:
        super().__init__(base, lambda d: make_router(d, name, echo))
        self.name = name


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.stop()


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, echo: Echo
) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("pbody"), str(request.param), echo)
    try:
        yield p
    finally:
        p.stop()


def raw(method: str, path: str, extra: str, body: bytes, length: str | None = None) -> bytes:
    cl = f"Content-Length: {len(body) if length is None else length}\r\n"
    head = f"{method} {path} HTTP/1.1\r\nHost: t.example\r\n{cl}{extra}\r\n".encode()
    return head + body


def bodies() -> int:
    assert _fastpath is not None
    return int(_fastpath.proxy_lane_bodies())


TYPES = [
    "",
    "Content-Type: application/x-www-form-urlencoded\r\n",
    "X-A: 1\r\nContent-Type: application/octet-stream\r\n",
    "Connection: X-Gone\r\nX-Gone: 1\r\n",
    "X-Forwarded-For: 198.51.100.7\r\nX-Lit: client\r\n",
]

body_st = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=1, max_value=MAX_BODY).map(lambda n: bytes(i % 251 for i in range(n))),
    st.sampled_from([b"a=1&b=two+words", b"x" * 1024, b"y" * 65536]),
)
request_st = st.tuples(
    st.sampled_from(["POST", "PUT", "PATCH"]),
    st.sampled_from(["/", "/x/y?q=1", "/made/it", "/a%20b/c"]),
    st.sampled_from(TYPES),
    body_st,
    st.integers(min_value=1, max_value=2),  # how many times it is sent, one by one
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=4))
def test_bodies_like_the_twin(pair: Pair, reqs: list[tuple[str, str, str, bytes, int]]) -> None:
    pair.both([raw(m, p, e, b) for m, p, e, b, times in reqs for _ in range(times)])


def test_lane_takes_bodies(pair: Pair) -> None:
    """Repeated POST, PUT and PATCH requests (1 KiB and 60 KiB) are sent by the lane once a
    connection is kept, and the upstream got every byte."""
    small = b"k" * 1024
    big = bytes(i % 251 for i in range(60000))
    reqs = [
        raw("POST", "/p", TYPES[1], small),
        raw("PUT", "/u", TYPES[2], big),
        raw("PATCH", "/made/x", "", b"z"),
    ] * 3
    before = bodies()
    got = pair.both(reqs)
    assert bodies() - before >= 6
    sha = hashlib.sha256(big).hexdigest().encode()
    assert [g[0] for g in got] == [200, 200, 201] * 3
    assert got[1][2].endswith(b"len=60000 sha256=%s\n" % sha)
    assert got[0][2].startswith(b"POST\nPOST /p HTTP/1.1\r\n")
    assert b"Content-Length: 1024\r\n" in got[0][2]


def test_refused_shapes(pair: Pair) -> None:
    """Heads the lane leaves to the chain are answered the same and never taken."""
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    cases = [
        [raw("POST", "/dup", "Content-Length: 3\r\n", b"abc")],
        [raw("POST", "/dup2", "Content-Length: 4\r\n", b"abc")],
        [raw("POST", "/clte", "Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n")],
        [raw("PUT", "/exp", "Expect: 100-continue\r\n", b"abc")],
        [chunked],
        [raw("POST", "/huge", "", b"h" * (MAX_BODY + 1))],
        [raw("POST", "/bad", "", b"abc", "+3")],
        [raw("POST", "/zero", "", b"", "0")],
        # a pipelined request behind the body
        [raw("POST", "/pipe", "", b"abc") + raw("POST", "/pipe2", "", b"de")],
    ]
    before = bodies()
    for reqs in cases:
        pair.both(reqs, refusals=True)
    assert bodies() == before


def test_body_in_a_later_read(pair: Pair) -> None:
    """A head whose body comes after a pause: the chain reads it (both answer the same)."""
    got: list[list[Seen]] = []
    for st_ in (pair.c, pair.py):
        with connect(st_.port) as sock:
            reader = Reader(sock)
            data = raw("POST", "/later", "", b"0123456789")
            sock.sendall(data[:-10])
            time.sleep(0.05)
            sock.sendall(data[-10:])
            reply = reader.response()
            got.append([(reply.status, [h for h in reply.headers if h[0] != "Date"], reply.body)])
    assert got[0] == got[1]
    pair.lines += 1  # (each server's log has its line: the next both() compares them)
    sha = hashlib.sha256(b"0123456789").hexdigest().encode()
    assert got[0][0][2].endswith(b"len=10 sha256=%s\n" % sha)


def test_stale_kept_connection_is_not_retried(pair: Pair) -> None:
    """A kept upstream connection that closes unanswered: a GET is sent again on a fresh
    one, a POST or PUT with a body is not (502), on the lane as in the chain (a /drop/
    request on a fresh connection is answered)."""
    before = bodies()
    got = pair.both(
        [
            raw("POST", "/warm", "", b"w"),
            b"GET /drop/g HTTP/1.1\r\nHost: t.example\r\n\r\n",
            raw("POST", "/warm", "", b"w"),
            raw("POST", "/drop/p", "", b"abc"),
            raw("POST", "/warm", "", b"w"),
            raw("PUT", "/drop/u", "", b"abc"),
        ]
    )
    statuses = [g[0] for g in got]
    if pair.name == "one":
        assert statuses == [200, 200, 200, 502, 200, 502]
    else:  # round robin: a request finds a kept connection to its upstream or dials
        assert statuses[:4] == [200, 200, 200, 502]
    assert bodies() - before >= 3


def test_body_past_the_first_read_is_taken(pair: Pair) -> None:
    """A 64 KiB body behind its head does not fit the lane's 64 KiB read: its rest, waiting
    in the socket, is read by the lane (at most the body's bytes) and the request taken."""
    body = bytes(i % 241 for i in range(MAX_BODY))
    before = bodies()
    got = pair.both([raw("PUT", "/full", TYPES[2], body)] * 3)
    assert bodies() - before >= 1
    sha = hashlib.sha256(body).hexdigest().encode()
    assert all(g[2].endswith(b"len=%d sha256=%s\n" % (MAX_BODY, sha)) for g in got)
