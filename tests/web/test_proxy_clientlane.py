"""The proxy lane (meshkit._fastpath, _proxylane.pxi + meshkit.web.proxy.clientlane)
against its twin, the Python handler chain: generated request sequences on keep-alive
connections to two servers over the same proxy site and one real backend, one server
reading with the compiled lanes and one in Python, get the same statuses, headers (bar
Date), bodies and access-log lines; the backend echoes the request head it got, so the
upstream heads the two made are compared too. The answers cover Content-Length, chunked,
a body that comes after its head (streamed), 204, a close-delimited body, a large body, a
stale kept connection (retried on a fresh one), HEAD, and an upstream that refuses
connections (502). Configurations: header_upstream with literal values, `without` +
`transparent` on a second block, header_downstream (answered through the Python writer),
`log` (the lane writes its lines), and a site the lane must not take (a header_upstream
placeholder)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import lane
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.proxy import clientlane
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect
from support.polling import wait_until

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "proxy_lane_stats")
pytestmark = pytest.mark.skipif(
    not HAVE_LANE or lane.LANE is None or not clientlane.ENABLED,
    reason="the compiled proxy lane is not built or is off",
)

HOST = "127.0.0.1"
BIG = 300_000
MID = 250_000  # under uvloop's 256 KiB read: usually whole in one read, sent by the lane


class Backend:
    """An upstream on its own loop: answers by the path's first segment (see the module's
    doc), echoing the request head it got."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        # a second address of the same backend, for the blocks with two upstreams
        self.server2 = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port2 = self.server2.sockets[0].getsockname()[1]

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, HOST, 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                kind = path.split(b"/")[1].split(b"?")[0] if path.count(b"/") else b""
                served += 1
                if kind == b"slow":
                    await asyncio.sleep(1.0)  # past the block's timeout
                if kind == b"drop" and served > 1:
                    return  # a kept connection closed unanswered: stale
                body = b"echo:" + head
                hop = b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Up: yes\r\n"
                send_body = method != b"HEAD"
                if kind == b"te":
                    out = b"HTTP/1.1 200 OK\r\n" + hop + b"Transfer-Encoding: chunked\r\n\r\n"
                    if send_body:
                        half = len(body) // 2
                        out += b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (
                            half,
                            body[:half],
                            len(body) - half,
                            body[half:],
                        )
                    writer.write(out)
                elif kind == b"later":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\n" + hop + b"Content-Length: %d\r\n\r\n" % len(body)
                    )
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    if send_body:
                        writer.write(body)
                elif kind == b"switch":
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                        b"Upgrade: x\r\n\r\n"
                    )
                    await writer.drain()
                    return
                elif kind == b"none":
                    writer.write(b"HTTP/1.1 204 No Content\r\nX-Up: none\r\n\r\n")
                elif kind == b"close":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
                        + (body if send_body else b"")
                    )
                    await writer.drain()
                    return
                elif kind in (b"big", b"mid"):
                    size = BIG if kind == b"big" else MID
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                        + (b"b" * size if send_body else b"")
                    )
                else:
                    status = b"404 Not Found" if kind == b"missing" else b"200 OK"
                    writer.write(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\n"
                        + hop
                        + b"Content-Length: %d\r\n\r\n" % len(body)
                        + (body if send_body else b"")
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the backend's shutdown (ends the task quietly)
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


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# name -> (site body, whether the lane takes it)
CONFIGS: dict[str, tuple[str, bool]] = {
    "literal": (
        " proxy / {up} {{\n  header_upstream X-Lit lit\n  header_upstream -Accept\n }}\n",
        True,
    ),
    "blocks": (
        " proxy /api {up} {{\n  without /api\n  transparent\n }}\n proxy / {up} {{\n"
        "  except /down\n }}\n proxy /down {dead}\n",
        True,
    ),
    "downstream": (
        " proxy / {up} {{\n  header_downstream X-Down yes\n  header_downstream -X-Up\n }}\n",
        True,
    ),
    "two_upstreams": (
        " proxy / {up} {up2} {{\n  policy round_robin\n  header_upstream X-Two 2\n }}\n",
        True,
    ),
    "logged": (
        " proxy / {up}\n log / {log}"
        ' "{{method}} {{uri}} {{status}} {{size}} {{>X-A}} {{upstream}} {{remote}}"\n',
        True,
    ),
    "placeholder": (" proxy / {up} {{\n  header_upstream X-Host {{host}}\n }}\n", False),
    # one upstream, few requests at a time (pipelined ones are dispatched together): the
    # lane's own pick (no Picker call) must give every pick back, or later requests find
    # the upstream full (502)
    "few_at_a_time": (" proxy / {up} {{\n  max_conns 3\n }}\n", True),
}


def make_router(base: Path, name: str, up: int, up2: int, dead: int) -> tuple[Router, Path]:
    body, _ = CONFIGS[name]
    logfile = base / "access.log"
    site = body.format(up=f"{HOST}:{up}", up2=f"{HOST}:{up2}", dead=f"{HOST}:{dead}", log=logfile)
    router = plan(load_text(f":8000 {{\n{site}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return router, logfile


class Pair:
    def __init__(self, base: Path, name: str, backend: Backend) -> None:
        dead = _refused_port()
        (base / "c").mkdir()
        (base / "py").mkdir()
        router_c, self.log_c = make_router(base / "c", name, backend.port, backend.port2, dead)
        router_py, self.log_py = make_router(base / "py", name, backend.port, backend.port2, dead)
        self.c = ServerThread(router_c, compiled=True)
        self.py = ServerThread(router_py, compiled=False)
        self.takes = CONFIGS[name][1]
        self.logged = name == "logged"
        self.lines = 0

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.stop()


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, backend: Backend
) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("plane"), str(request.param), backend)
    yield p
    p.stop()


PATHS = [
    "/",
    "/x/y",
    "/te/a",
    "/later/b",
    "/none",
    "/close/c",
    "/big/",
    "/drop/d",
    "/missing/m",
    "/api/v?q=1",
    "/api",
    "/down/z",
    "/a%20b/c",
    "/x/../y",
    "/switch/w",
]
EXTRAS = [
    "",
    "X-A: 1\r\n",
    "X-Forwarded-For: 198.51.100.7\r\n",
    "Connection: X-Gone\r\nX-Gone: 1\r\n",
    "Accept: */*\r\nX-Lit: client\r\n",
    "Host: other.example\r\n",
    "Expect: 100-continue\r\n",
    "Connection: close\r\n",
    "Cookie: a=b; c=d\r\nUser-Agent: " + "u" * 300 + "\r\n",
]

request_st = st.tuples(
    st.sampled_from(["GET", "HEAD", "OPTIONS", "DELETE"]),
    st.sampled_from(PATHS),
    st.sampled_from(EXTRAS),
    st.integers(min_value=1, max_value=2),  # how many times it is sent, one by one
)

Seen = tuple[int, list[tuple[str, str]], bytes]


def raw(method: str, path: str, extra: str) -> bytes:
    host = "" if extra.startswith("Host:") else "Host: t.example\r\n"
    return f"{method} {path} HTTP/1.1\r\n{host}{extra}\r\n".encode()


def run(st_: ServerThread, plan_: list[tuple[bytes, str]]) -> list[Seen]:
    seen: list[Seen] = []
    with connect(st_.port) as sock:
        reader = Reader(sock)
        for data, method in plan_:
            sock.sendall(data)
            reply = reader.response(method)
            heads = [(k, v) for k, v in reply.headers if k.lower() != "date"]
            # the server's own port (X-Forwarded-Port under transparent) differs by design
            body = reply.body.replace(b"Port: %d" % st_.port, b"Port: PORT")
            seen.append((reply.status, heads, body))
            if reply.header("Connection") == "close" or reader.eof:
                break
    return seen


def taken() -> int:
    assert _fastpath is not None
    return int(_fastpath.proxy_lane_stats()[2])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=5))
def test_lane_answers_like_its_twin(pair: Pair, reqs: list[tuple[str, str, str, int]]) -> None:
    plan_ = [(raw(m, p, e), m) for m, p, e, times in reqs for _ in range(times)]
    before = taken()
    got_c = run(pair.c, plan_)
    got_py = run(pair.py, plan_)
    assert got_c == got_py
    if not pair.takes:
        assert taken() == before
    if pair.logged:
        pair.lines += len(got_c)
        assert wait_until(
            lambda: pair.log_c.exists() and pair.log_c.read_text().count("\n") >= pair.lines
        )
        assert wait_until(
            lambda: pair.log_py.exists() and pair.log_py.read_text().count("\n") >= pair.lines
        )
        lines_c = pair.log_c.read_text().splitlines()
        assert lines_c == pair.log_py.read_text().splitlines()


def test_lane_takes_repeats(pair: Pair) -> None:
    """An eligible site's requests are sent by the lane (its count grows by one per
    request), pipelined heads queue behind the one in flight in order, and the connection
    is idle after each answer."""
    head = raw("GET", "/x/rep", "X-A: 2\r\n")
    before = taken()
    with connect(pair.c.port) as sock:
        reader = Reader(sock)
        bodies = []
        for _ in range(4):
            sock.sendall(head)
            bodies.append(reader.response().body)
        sock.sendall(head + raw("GET", "/later/p", "") + head)  # pipelined
        bodies += [reader.response().body for _ in range(3)]
    # (which upstream answered differs under round robin)
    bodies = [re.sub(rb"Host: [^\r]*\r\n", b"", b) for b in bodies]
    assert len(set(bodies[:4])) == 1 and bodies[4] == bodies[0] == bodies[6]
    assert bodies[5].startswith(b"echo:GET /")
    assert (taken() - before >= 4) is pair.takes


def test_lane_client_gone_mid_answer(pair: Pair) -> None:
    """The client closes while the answer is on its way (streamed and whole): the server
    keeps serving others, and the connection is gone."""
    for path in ("/later/g", "/x/g"):
        with connect(pair.c.port) as sock:
            sock.sendall(raw("GET", path, ""))
        with connect(pair.c.port) as sock:
            reader = Reader(sock)
            sock.sendall(raw("GET", "/x/after", ""))
            assert reader.response().status == 200

    def streaming() -> list[Any]:
        return [c for c in pair.c.server._conns if getattr(c, "_streaming", False)]

    assert wait_until(lambda: not pair.c.run(streaming))


def _in_flight(router: Any) -> list[int]:
    counts = []
    for site in router.routes:
        handler = site.handler
        unwrapped = clientlane.unwrap_log(handler)
        if unwrapped is not None:
            handler = unwrapped[0]
        for route in getattr(handler, "routes", ()):
            picker = route.set.picker
            if picker is not None:
                counts += [picker.in_flight(i) for i in range(picker.count)]
    return counts


def test_lane_gives_every_pick_back(pair: Pair) -> None:
    """After answers of every kind (whole, streamed, stale and retried, refused, a client
    gone), no upstream is left with a request in flight."""
    with connect(pair.c.port) as sock:
        reader = Reader(sock)
        for path in ("/x/1", "/later/2", "/drop/3", "/drop/4", "/down/5", "/none", "/x/1"):
            sock.sendall(raw("GET", path, ""))
            reader.response("GET")
    with connect(pair.c.port) as sock:
        sock.sendall(raw("GET", "/later/gone", ""))
    router = pair.c.server._handler
    assert pair.c.run(lambda: _in_flight(router))  # the pickers were found
    assert wait_until(lambda: not any(pair.c.run(lambda: _in_flight(router))))


def test_plan_declines(pair: Pair) -> None:
    """Heads the lane never takes: HTTP/1.0, a method it does not send, two heads in one
    read. They are answered by the Python path. (Small bodies: test_proxy_bodylane.)"""
    before = taken()
    for data in (
        b"GET /x HTTP/1.0\r\nHost: t\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    ):
        with connect(pair.c.port) as sock:
            sock.sendall(data)
            assert Reader(sock).response().status in (200, 404)
    assert taken() == before


def test_timeout_and_reload(tmp_path: Path, backend: Backend) -> None:
    """An upstream that does not answer within the block's timeout: 504 from the lane as
    from the twin (and the connection keeps serving); a reload's new configuration is
    used by the next request (plans are made for one router), and so are new head
    limits."""
    CONFIGS["timeout"] = (" proxy / {up} {{\n  timeout 300ms\n }}\n", True)
    p = Pair(tmp_path, "timeout", backend)
    try:
        slow = raw("GET", "/slow/s", "")
        fast = raw("GET", "/x/t", "")
        before = taken()
        got_c = run(p.c, [(fast, "GET"), (slow, "GET"), (fast, "GET")])
        got_py = run(p.py, [(fast, "GET"), (slow, "GET"), (fast, "GET")])
        assert [g[0] for g in got_c] == [200, 504, 200]
        assert got_c == got_py
        assert taken() - before >= 2
        CONFIGS["timeout"] = (" proxy / {up} {{\n  header_upstream X-New 1\n }}\n", True)
        (tmp_path / "new").mkdir()
        router, _ = make_router(tmp_path / "new", "timeout", backend.port, backend.port2, 1)
        p.c.run(lambda: p.c.server.set_handler(router))
        (status, _, body), *_ = run(p.c, [(fast, "GET")])
        assert status == 200 and b"X-New: 1" in body
        # lower head limits (a reload's set_limits): the remembered head is judged again
        for server in (p.c, p.py):
            server.run(lambda s=server: s.server.set_limits(header_limit=20))  # type: ignore[misc]
        assert run(p.c, [(fast, "GET")]) == run(p.py, [(fast, "GET")])
        assert run(p.c, [(fast, "GET")])[0][0] == 431
    finally:
        CONFIGS.pop("timeout", None)
        p.stop()


def test_slow_client_gets_the_rest(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose socket takes only part of a whole answer: the lane hands the rest to
    the connection's writer (clientlane.partial), and the bytes are the twin's. (The
    answer must come in one read from the upstream to be sent by the lane: a few tries.)"""
    calls: list[int] = []
    real = clientlane.partial

    def counting(*args: Any) -> None:
        calls.append(1)
        real(*args)

    monkeypatch.setattr(clientlane, "partial", counting)
    p = Pair(tmp_path, "literal", backend)
    try:
        for _ in range(5):
            got = _slow_pair(p)
            assert got[0] == got[1]
            assert got[0][1] == MID
            if calls:
                break
        assert calls
    finally:
        p.stop()


def _slow_pair(p: Pair) -> list[tuple[int, int, int, bytes]]:
    got = []
    for server in (p.c, p.py):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((HOST, server.port))
        with sock:
            local = sock.getsockname()

            def shrink(st_: ServerThread = server, local: Any = local) -> bool:
                # the server's end of this connection takes 4 KiB at a time
                for c in st_.server._conns:
                    s = getattr(c, "_sock", None)
                    if s is not None and s.getpeername() == local:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                        return True
                return False

            assert wait_until(lambda st_=server: st_.run(shrink))  # type: ignore[misc]
            sock.sendall(raw("GET", "/mid/s", ""))
            time.sleep(0.2)  # the server's send fills the small window meanwhile
            reader = Reader(sock)
            reply = reader.response()
            sock.sendall(raw("GET", "/x/next", ""))
            after = reader.response()
            got.append((reply.status, len(reply.body), after.status, after.body))
    return got


@pytest.mark.parametrize("fmt", ["{uri} {status} {port}", "{uri} {status} {remote}"])
def test_lane_log_lines_per_connection(tmp_path: Path, backend: Backend, fmt: str) -> None:
    """Two connections of one client take turns sending the same head: each answer's line
    is its own connection's (the lane remembers a connection's last lines, and a plan's
    lines by client port only when a line shows it), in the order they were answered, in
    both servers alike."""
    body = fmt.replace("{", "{{").replace("}", "}}")  # (make_router formats the site)
    CONFIGS["logged_fmt"] = (f' proxy / {{up}}\n log / {{log}} "{body}"\n', True)
    p = Pair(tmp_path, "logged_fmt", backend)
    try:
        head = raw("GET", "/x/log", "")
        for server, logf in ((p.c, p.log_c), (p.py, p.log_py)):
            with connect(server.port) as one, connect(server.port) as two:
                readers = {one: Reader(one), two: Reader(two)}
                order = [one, two, two, one, one, two]
                for sock in order:
                    sock.sendall(head)
                    assert readers[sock].response().status == 200
                ports = [str(s.getsockname()[1]) for s in order]
                assert wait_until(lambda f=logf: f.exists() and f.read_text().count("\n") >= 6)
            lines = logf.read_text().splitlines()
            if "{port}" in fmt:
                assert lines == [f"/x/log 200 {port}" for port in ports]
            else:
                assert lines == ["/x/log 200 127.0.0.1"] * 6
    finally:
        p.stop()
        del CONFIGS["logged_fmt"]
