"""The FastCGI lane (meshkit._fastpath, _fcgilane.pxi + meshkit.web.fastcgi.clientlane)
against its twin, the Python handler chain: generated request sequences on keep-alive
connections to two servers over the same `fastcgi` site in front of one real php-fpm 8.2
(over TCP and over a unix socket), one server reading with the compiled lanes and one in
Python, get the same statuses, headers (bar Date), bodies and access-log lines; a script
prints the $_SERVER php saw (bar what differs per connection), so the FastCGI PARAMS the
two made are compared too. The scripts cover a plain page, status codes, Location, two
fields of one name, a Content-Length that lies, stderr output, a reply too long for one read
(streamed), HEAD, PATH_INFO, query strings, folder paths (index.php, declined by the lane)
and missing scripts; php-fpm restarted between requests leaves closed kept connections,
which both recover from."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import threading
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
from meshkit.web.fastcgi import clientlane
from meshkit.web.proxy.clientlane import handler_of
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect
from support.php_fpm import PhpFpm, php_fpm, php_fpm_binary
from support.polling import wait_until

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "fcgi_lane_stats")
pytestmark = [
    pytest.mark.skipif(
        not HAVE_LANE or lane.LANE is None or not clientlane.ENABLED,
        reason="the compiled FastCGI lane is not built or is off",
    ),
    pytest.mark.skipif(php_fpm_binary() is None, reason="needs php-fpm"),
]

SCRIPTS = {
    "hello.php": '<?php echo "Hello World\\n";',
    # what php saw, bar what differs per connection and server (REMOTE_PORT, SERVER_PORT)
    "env.php": "<?php $s = $_SERVER; foreach (['REMOTE_PORT', 'SERVER_PORT', 'REQUEST_TIME',"
    " 'REQUEST_TIME_FLOAT'] as $k) { unset($s[$k]); } ksort($s);"
    " foreach ($s as $k => $v) { echo $k, '=', is_string($v) ? $v : json_encode($v), \"\\n\"; }",
    "status.php": "<?php $c = intval($_GET['c'] ?? 200); http_response_code($c);"
    " header('X-Two: a'); header('X-Two: b', false);"
    " if (isset($_GET['len'])) { header('Content-Length: ' . $_GET['len']); }"
    " if (isset($_GET['loc'])) { header('Location: ' . $_GET['loc']); }"
    " echo str_repeat('z', intval($_GET['n'] ?? 3));",
    "err.php": "<?php file_put_contents('php://stderr', \"oops\\n\"); echo 'after';",
    "big.php": "<?php echo str_repeat('b', 300000);",
    "dir/index.php": "<?php echo 'index ', $_SERVER['SCRIPT_NAME'];",
    "static.txt": "plain file\n",
}

PATHS = [
    "/hello.php",
    "/env.php",
    "/env.php/extra/p%20q",
    "/env.php?a=1&b=%20x",
    "/status.php?c=404&n=5",
    "/status.php?c=204",
    "/status.php?c=302&loc=/hello.php",
    "/status.php?loc=/x",
    "/status.php?len=2&n=4",
    "/status.php?len=3",
    "/err.php",
    "/big.php",
    "/dir/",
    "/missing.php",
    "/static.txt",
    "/a/../hello.php",
]
EXTRAS = [
    "",
    "X-A: 1\r\n",
    "Cookie: a=b\r\nCookie: c=d\r\n",
    "X_Under: 1\r\nX-Under: 2\r\n",
    "Host: other.example\r\n",
    "Accept: */*\r\nUser-Agent: " + "u" * 300 + "\r\n",
    "Content-Type: text/x\r\nProxy: p\r\n",
    "Connection: close\r\n",
]

request_st = st.tuples(
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(PATHS),
    st.sampled_from(EXTRAS),
    st.integers(min_value=1, max_value=2),  # how many times it is sent, one by one
)

Seen = tuple[int, list[tuple[str, str]], bytes]


def raw(method: str, path: str, extra: str) -> bytes:
    host = "" if extra.startswith("Host:") else "Host: t.example\r\n"
    return f"{method} {path} HTTP/1.1\r\n{host}{extra}\r\n".encode()


def taken() -> tuple[int, int]:
    assert _fastpath is not None
    stats = _fastpath.fcgi_lane_stats()
    return int(stats[2]), int(stats[3])


def make_router(base: Path, root: Path, endpoint: str, logged: bool = True) -> tuple[Router, Path]:
    logfile = base / "access.log"
    site = f" root {root}\n fastcgi / {endpoint} php\n"
    if logged:
        site += f' log / {logfile} "{{method}} {{uri}} {{status}} {{size}} {{>X-A}} {{remote}}"\n'
    else:
        logfile.write_text("")  # no log: the lane's own answer path (not the logged one)
    router = plan(load_text(f":8000 {{\n{site}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return router, logfile


class Pair:
    def __init__(self, base: Path, root: Path, endpoint: str, logged: bool = True) -> None:
        (base / "c").mkdir()
        (base / "py").mkdir()
        router_c, self.log_c = make_router(base / "c", root, endpoint, logged)
        router_py, self.log_py = make_router(base / "py", root, endpoint, logged)
        self.logged = logged
        self.c = ServerThread(router_c, compiled=True)
        self.py = ServerThread(router_py, compiled=False)
        self.lines = 0

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()

    def run(self, st_: ServerThread, plan_: list[tuple[bytes, str]]) -> list[Seen]:
        seen: list[Seen] = []
        with connect(st_.port) as sock:
            reader = Reader(sock)
            for data, method in plan_:
                sock.sendall(data)
                reply = reader.response(method)
                heads = [(k, v) for k, v in reply.headers if k.lower() != "date"]
                seen.append((reply.status, heads, reply.body))
                if reply.header("Connection") == "close" or reader.eof:
                    break
        return seen

    def both(self, plan_: list[tuple[bytes, str]], got_c: list[Seen] | None = None) -> list[Seen]:
        """Send the plan to both servers (to the Python one only when the compiled one's
        answers are given) and compare answers and log lines."""
        if got_c is None:
            got_c = self.run(self.c, plan_)
        got_py = self.run(self.py, plan_)
        assert got_c == got_py
        if not self.logged:
            return got_c
        self.lines += len(got_c)
        assert wait_until(
            lambda: self.log_c.exists() and self.log_c.read_text().count("\n") >= self.lines
        )
        assert wait_until(
            lambda: self.log_py.exists() and self.log_py.read_text().count("\n") >= self.lines
        )
        assert self.log_c.read_text().splitlines() == self.log_py.read_text().splitlines()
        return got_c


@pytest.fixture(scope="module")
def fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PhpFpm, Path]]:
    base = tmp_path_factory.mktemp("fcgilane")
    root = base / "root"
    (root / "dir").mkdir(parents=True)
    for name, text in SCRIPTS.items():
        (root / name).write_text(text)
    with php_fpm(base / "fpm", children=4) as f:
        yield f, root


@pytest.fixture(scope="module", params=["tcp", "unix"])
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    fpm: tuple[PhpFpm, Path],
) -> Iterator[Pair]:
    f, root = fpm
    endpoint = f.tcp if request.param == "tcp" else f.unix
    p = Pair(tmp_path_factory.mktemp("fcgipair"), root, endpoint)
    yield p
    p.stop()


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=5))
def test_lane_answers_like_its_twin(pair: Pair, reqs: list[tuple[str, str, str, int]]) -> None:
    plan_ = [(raw(m, p, e), m) for m, p, e, times in reqs for _ in range(times)]
    pair.both(plan_)


def test_lane_takes_hello(pair: Pair) -> None:
    """Repeated Hello World heads are sent and answered by the lane once a connection is
    kept (the first one is dialled by the handler), and php saw the same environment."""
    before_taken, before_written = taken()
    head = raw("GET", "/hello.php", "X-A: 2\r\n")
    got = pair.both([(head, "GET")] * 6)
    assert {g[2] for g in got} == {b"Hello World\n"}
    after_taken, after_written = taken()
    assert after_taken - before_taken >= 4
    assert after_written - before_written >= 4
    env = pair.both([(raw("GET", "/env.php/i?q=1", ""), "GET")] * 3)
    body = env[-1][2].decode()
    assert "SCRIPT_NAME=/env.php\n" in body and "PATH_INFO=/i\n" in body
    assert "REQUEST_URI=/env.php/i?q=1\n" in body and "REMOTE_ADDR=127.0.0.1\n" in body


def test_lane_answers_head(pair: Pair) -> None:
    """A HEAD whose script sends its own Content-Length is answered by the lane (head only,
    the script's length); without one it goes to the Python writer (a stream, no length)."""
    head = raw("HEAD", "/status.php?len=3", "X-A: 3\r\n")
    pair.both([(head, "HEAD")])  # the first one may dial
    before_taken, before_written = taken()
    got = pair.both([(head, "HEAD"), (raw("GET", "/status.php?len=3", ""), "GET"), (head, "HEAD")])
    assert [g[2] for g in got] == [b"", b"zzz", b""]
    assert ("Content-Length", "3") in got[0][1]
    assert taken()[1] - before_written == 3
    before_taken, before_written = taken()
    got = pair.both([(raw("HEAD", "/hello.php", ""), "HEAD")] * 2)
    assert all(not any(k.lower() == "content-length" for k, _ in g[1]) for g in got)
    after_taken, after_written = taken()
    assert after_taken - before_taken == 2 and after_written == before_written


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=5))
def test_lane_without_log(
    fpm: tuple[PhpFpm, Path], tmp_path_factory: pytest.TempPathFactory, reqs: Any
) -> None:
    """A site without `log`: the lane answers known reply shapes from php-fpm's raw CGI head
    (_FLSink._raw), byte for byte as the Python path."""
    global _UNLOGGED
    f, root = fpm
    if _UNLOGGED is None:
        _UNLOGGED = Pair(tmp_path_factory.mktemp("fcginolog"), root, f.tcp, logged=False)
    before_written = taken()[1]
    plan_ = [(raw(m, p, e), m) for m, p, e, times in reqs for _ in range(times)]
    _UNLOGGED.both(plan_)
    _UNLOGGED.both([(raw("GET", "/hello.php", ""), "GET")] * 3)
    assert taken()[1] - before_written >= 2  # the last two Hello Worlds at least


_UNLOGGED: Pair | None = None


@pytest.fixture(scope="module", autouse=True)
def _stop_unlogged() -> Iterator[None]:
    yield
    global _UNLOGGED
    if _UNLOGGED is not None:
        _UNLOGGED.stop()
        _UNLOGGED = None


def test_php_fpm_restart(pair: Pair, fpm: tuple[PhpFpm, Path]) -> None:
    """php-fpm restarted while both servers keep connections to it: the next requests are
    answered as before (the kept connections were closed; the lane leaves those to the
    handler, which dials), and the lane takes requests again after that."""
    plan_ = [(raw("GET", "/hello.php", ""), "GET")] * 3
    pair.both(plan_)
    fpm[0].restart()
    got = pair.both([*plan_, (raw("GET", "/env.php", ""), "GET")])
    assert [g[0] for g in got] == [200] * 4
    before, _ = taken()
    pair.both(plan_)
    assert taken()[0] > before
    # again with the lane's loop held while php-fpm restarts and a request arrives: the
    # request is read before the kept connection's close, the lane writes it on a closed
    # (stale) connection, and it is sent again on a fresh one (the client's rules).
    # php-fpm is killed (a graceful stop's old child may still answer)
    calls: list[Any] = []
    ready = clientlane.ready

    def counted(sink: Any, upconn: Any) -> None:
        calls.append(upconn)
        ready(sink, upconn)

    clientlane.ready = counted  # type: ignore[assignment]
    try:
        got_c = _held_restart(pair, fpm[0], plan_[0][0])
        pair.both([plan_[0], plan_[0]], got_c)
        assert [g[2] for g in got_c] == [b"Hello World\n"] * 2
    finally:
        clientlane.ready = ready  # type: ignore[assignment]
    assert calls  # the lane wrote on the stale connection; the client's rules sent it again


def _kill_restart(fpm: PhpFpm) -> None:
    """php-fpm's master and children killed at once (SIGKILL, by pid: a crash, not the
    graceful stop whose old children may still answer a request on a kept connection),
    then started again on the same addresses."""
    proc = fpm.proc
    assert proc is not None
    pids = [proc.pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == proc.pid:
                pids.append(int(entry))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    fpm.proc = None
    with contextlib.suppress(FileNotFoundError):
        fpm.sock.unlink()  # left behind by the killed master
    fpm.start()


def _kept_sockets(st_: ServerThread) -> list[Any]:
    """The sockets of the FastCGI connections the server keeps idle (read while its loop
    is held)."""
    router = st_.server._handler
    assert isinstance(router, Router)
    out: list[Any] = []
    for site in router.routes:
        handler = handler_of(site.handler)[0]
        for rule in getattr(handler, "rules", ()):
            for up in rule.client.upstreams:
                out += [c.transport.get_extra_info("socket") for c in up.idle if not c.closed]
    return out


def _all_readable(socks: list[Any]) -> bool:
    return len(select.select(socks, [], [], 0)[0]) == len(socks)


def _held_restart(pair: Pair, fpm: PhpFpm, head: bytes) -> list[Seen]:
    """Two requests on one connection to the compiled server; before the second is sent,
    the server's loop is held (and known to be), php-fpm is killed and started again, and
    the hold lasts until every kept connection's socket has the peer's close waiting in it
    and the request is in the client socket: it ends with the connection's lane reading the
    request before the loop has seen any close, so the lane writes it on a stale kept
    connection, every time."""
    held = threading.Event()
    holding = threading.Event()
    got: list[Seen] = []

    def hold_then_read(port: int) -> None:
        holding.set()
        held.wait(30.0)
        for conn in pair.c.server._conns:
            lane_ = getattr(conn, "_lane", None)
            if getattr(conn, "_remote_port", 0) == port and lane_ is not None:
                lane_.on_readable()

    try:
        with connect(pair.c.port) as sock:
            reader = Reader(sock)
            for second in (False, True):
                if second:
                    pair.c.loop.call_soon_threadsafe(hold_then_read, sock.getsockname()[1])
                    assert holding.wait(30.0)
                    kept = _kept_sockets(pair.c)
                    assert kept  # the first request left a kept connection
                    _kill_restart(fpm)
                    # the peer's close is in every kept socket (readable: EOF), unseen
                    assert wait_until(functools.partial(_all_readable, kept))
                sock.sendall(head)
                if second:
                    held.set()
                reply = reader.response()
                heads = [h for h in reply.headers if h[0].lower() != "date"]
                got.append((reply.status, heads, reply.body))
    finally:
        held.set()
    return got


def test_plan_declines(pair: Pair) -> None:
    """Heads the lane never takes: HTTP/1.0, another method, a folder path, a missing
    script (requests with a body: tests/web/test_fastcgi_bodylane.py)."""
    before, _ = taken()
    for data, method in (
        (b"GET /hello.php HTTP/1.0\r\nHost: t\r\n\r\n", "GET"),
        (b"DELETE /hello.php HTTP/1.1\r\nHost: t\r\n\r\n", "DELETE"),
        (b"GET /dir/ HTTP/1.1\r\nHost: t\r\n\r\n", "GET"),
        (b"GET /nothere.php HTTP/1.1\r\nHost: t\r\n\r\n", "GET"),
    ):
        got = pair.both([(data, method)] * 2)
        assert got[0][0] in (200, 404)
    assert taken()[0] == before


def test_full_pool_queue(tmp_path: Path) -> None:
    """More clients at once than php-fpm has children (2): the pool learns its cap and the
    lane's requests wait in its queue for a kept connection (no dial past the cap, no
    Future); every answer is right, and the lane answered most of them."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.php").write_text(SCRIPTS["hello.php"])
    with php_fpm(tmp_path / "fpm", children=2) as f:
        router, _ = make_router(tmp_path, root, f.tcp)
        server = ServerThread(router, compiled=True)
        try:
            head = raw("GET", "/hello.php", "")
            bodies: list[bytes] = []
            lock = threading.Lock()

            def client() -> None:
                with connect(server.port) as sock:
                    reader = Reader(sock)
                    for _ in range(40):
                        sock.sendall(head)
                        reply = reader.response()
                        with lock:
                            bodies.append(reply.body if reply.status == 200 else b"")

            assert _fastpath is not None
            before = taken()
            waited = _fastpath.fcgi_lane_stats()[7]
            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert bodies == [b"Hello World\n"] * 320
            assert taken()[0] - before[0] >= 200
            assert _fastpath.fcgi_lane_stats()[7] > waited  # some waited in the pool's queue
        finally:
            server.stop()
