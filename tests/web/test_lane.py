"""The compiled client-side lane (meshkit._fastpath.Lane) against its twin
(Connection._on_readable): generated request sequences on keep-alive connections to two
servers over the same site, one reading with the lane and one in Python, get the same
statuses, headers (bar Date), bodies, closes and access-log lines; the lane answers the
repeated heads itself (its hit count), and hands everything else to the Python path."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import fileserver, lane, ruletable
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.connection import Connection
from meshkit.web.respcache import MAX_HEAD
from meshkit.web.router import Router
from meshkit.web.sendfile import SEND_AGAIN
from support.httpserver_util import Reader, ServerThread, connect
from support.lanediff import Req, log_lines, plan_of, run

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "Lane")
pytestmark = pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
OLD = 1_600_000_000
LOG_FORMAT = "{remote} {user} {method} {uri} {proto} {status} {size} {>Range}"


RULES = """ header / X-Frame-Options DENY
 header / -Server
 redir /old /new 301
 rewrite ^/page$ /a.txt
 basicauth /sub alice s3cret
"""
KINDS = ["logged", "unlogged", "rules"]


def make_site(base: Path, kind: str = "logged") -> tuple[Router, Path]:
    www = base / "www"
    (www / "sub").mkdir(parents=True)
    (www / "a.txt").write_bytes(b"hello, lane")
    (www / "index.html").write_bytes(b"<p>home</p>")  # not the welcome page (names the root)
    (www / "sub" / "index.html").write_bytes(b"<p>sub</p>")
    (www / "big.bin").write_bytes(bytes(range(256)) * 160)  # remembered as a file range
    for p in (www / "a.txt", www / "index.html", www / "sub" / "index.html", www / "big.bin"):
        os.utime(p, (OLD, OLD))
    for p in (www / "sub", www):
        os.utime(p, (OLD, OLD))
    logfile = base / "access.log"
    log = f' log / {logfile} "{LOG_FORMAT}"\n' if kind != "unlogged" else ""
    rules = RULES if kind == "rules" else ""
    text = f":8000 {{\n root {www}\n header / X-Lane yes\n{rules}{log}}}\n"
    router = plan(load_text(text, "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return router, logfile


def hits_of(server: ServerThread) -> int:
    """Requests the lanes of the server's open connections answered."""
    conns = server.run(lambda: list(server.server._conns))
    lanes = [getattr(c, "_lane", None) for c in conns]
    return sum(int(ln.hits) for ln in lanes if ln is not None)


class Pair:
    """Two servers over copies of one site: the lane's and the twin's."""

    def __init__(self, base: Path, kind: str) -> None:
        (base / "c").mkdir()
        (base / "py").mkdir()
        self.logged = kind != "unlogged"
        router_c, self.log_c = make_site(base / "c", kind)
        router_py, self.log_py = make_site(base / "py", kind)
        self.c = ServerThread(router_c, compiled=True)
        self.py = ServerThread(router_py, compiled=False)
        self.lines = 0

    def lane_hits(self) -> int:
        return hits_of(self.c)

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()


@pytest.fixture(scope="module", autouse=True)
def no_rule_table() -> Iterator[None]:
    """The lane's answers from the response cache (the rule table, which answers sites it
    compiles before the cache learns them, has its own tests: test_lane_rules.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ruletable, "ENABLED", False)
        yield


@pytest.fixture(autouse=True)
def trust_fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(scope="module", params=KINDS, ids=KINDS)
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    assert lane.LANE is not None
    p = Pair(tmp_path_factory.mktemp("lane"), str(request.param))
    yield p
    p.stop()


PATHS = ["/", "/a.txt", "/sub", "/sub/", "/sub/index.html", "/missing", "/a.txt/", "/big.bin"]
PATHS += ["/page", "/old", "/page?x=1"]  # the rule site's rewrite and redir
EXTRAS = [
    "",
    "Range: bytes=0-3\r\n",
    "Range: bytes=5-\r\n",
    'If-None-Match: "nope"\r\n',
    "If-Modified-Since: Sun, 06 Dec 2099 00:00:00 GMT\r\n",
    "Accept-Encoding: gzip\r\n",
    "Expect: 100-continue\r\n",
    "Authorization: Basic " + base64.b64encode(b"alice:s3cret").decode() + "\r\n",
    "Authorization: Basic " + base64.b64encode(b"alice:wrong").decode() + "\r\n",
]

request_st = st.tuples(
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(PATHS),
    st.sampled_from(["1.1", "1.0"]),
    st.sampled_from(EXTRAS),
    st.integers(min_value=1, max_value=3),  # how many times it is sent, one by one
    st.booleans(),  # the last request asks to close
)


def raw(method: str, path: str, version: str, extra: str, close: bool) -> bytes:
    keep = "Connection: keep-alive\r\n" if version == "1.0" and not close else ""
    closing = "Connection: close\r\n" if close else ""
    return (
        f"{method} {path} HTTP/{version}\r\nHost: t.example\r\n{extra}{keep}{closing}\r\n"
    ).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=5))
def test_lane_answers_like_its_twin(pair: Pair, reqs: list[Req]) -> None:
    plan_ = plan_of(reqs, raw)
    got_c = run(pair.c, plan_)
    got_py = run(pair.py, plan_)
    assert got_c == got_py
    if not pair.logged:
        return
    pair.lines += len(got_c[0])
    assert log_lines(pair.log_c, pair.lines) == log_lines(pair.log_py, pair.lines)


def test_lane_answers_repeats_itself(pair: Pair) -> None:
    """Repeated heads without callbacks are answered by the lane; a pipelined read (two
    heads in one read) and a changed file go the Python way, with the same answers."""
    before = pair.lane_hits()
    head = b"GET /a.txt HTTP/1.1\r\nHost: t.example\r\nX-Once: 1\r\n\r\n"
    with connect(pair.c.port) as sock:
        reader = Reader(sock)
        bodies = []
        for _ in range(4):
            sock.sendall(head)
            bodies.append(reader.response().body)
        # the lane counts while the connection is open
        hits = pair.lane_hits() - before
        sock.sendall(head + head)  # pipelined: not one head, so not from the cache
        bodies += [reader.response().body, reader.response().body]
    assert bodies == [b"hello, lane"] * 6
    # the three repeats by the lane itself (with the log: its lines replayed)
    assert hits == 3


def test_lane_sends_cached_entries_without_callbacks(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"plain")
    (www / "big.bin").write_bytes(b"x" * 50000)
    for p in (www / "a.txt", www / "big.bin", www):
        os.utime(p, (OLD, OLD))
    router = plan(load_text(f":8000 {{\n root {www}\n}}\n", "Caddyfile"))[8000].router()
    server = ServerThread(router, compiled=True)
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            got = []
            for path in ["/a.txt", "/a.txt", "/a.txt", "/big.bin", "/big.bin"]:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                got.append(reader.response())
            hits = hits_of(server)
            (www / "a.txt").write_bytes(b"changed")  # the entry is stale: the twin reads it
            sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            changed = reader.response()
        assert [r.body for r in got] == [b"plain"] * 3 + [b"x" * 50000] * 2
        assert got[1].headers[1:] == got[0].headers[1:] or got[1].header("ETag") == got[0].header(
            "ETag"
        )
        assert hits == 3  # the repeats of /a.txt (twice) and of /big.bin (sendfile)
        assert changed.body == b"changed"
    finally:
        server.stop()


def test_lane_limits_match_the_cache() -> None:
    assert _fastpath is not None
    assert _fastpath.LANE_MAX_HEAD == MAX_HEAD


@pytest.mark.parametrize("compiled", [True, False], ids=["lane", "twin"])
def test_replayed_log_lines_follow_the_client(tmp_path: Path, compiled: bool) -> None:
    """Log lines of answers from the cache are reused only for the same client address,
    port and second: two connections each get their own port in their lines."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"a")
    logfile = tmp_path / "ports.log"
    text = f':8000 {{\n root {www}\n log / {logfile} "{{port}} {{uri}} {{status}} {{size}}"\n}}\n'
    router = plan(load_text(text, "Caddyfile"))[8000].router()
    server = ServerThread(router, compiled=compiled)
    try:
        ports = []
        for _ in range(2):
            with connect(server.port) as sock:
                ports.append(sock.getsockname()[1])
                reader = Reader(sock)
                for _ in range(3):
                    sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert reader.response().body == b"a"
        got = log_lines(logfile, 6)
    finally:
        server.stop()
    assert got == [f"{p} /a.txt 200 1" for p in ports for _ in range(3)]


def test_stat_matches_follows_the_file(tmp_path: Path) -> None:
    """The compiled check FileCache.lookup uses for a known entry: one stat, compared."""
    assert _fastpath is not None
    matches = _fastpath.stat_matches
    f = tmp_path / "f.txt"
    f.write_bytes(b"one")
    os.utime(f, (OLD, OLD))

    def sig() -> tuple[str, int, int, int, int, int]:
        st = os.stat(f)
        return (str(f), st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    before = sig()
    assert matches(before)
    f.write_bytes(b"two")  # same size, new mtime
    assert not matches(before)
    assert matches(sig())
    now = sig()
    f.unlink()
    assert not matches(now)
    assert not matches(("/x\0y", *now[1:]))  # os.stat refuses an embedded NUL
    assert not matches(("/\udcff", *now[1:]))  # a surrogate escape: left to os.stat


@pytest.mark.parametrize("compiled", [True, False], ids=["lane", "twin"])
def test_cached_answer_larger_than_the_socket_buffer(
    tmp_path: Path, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered 6 MiB file the client reads late: the lane's send stops at EAGAIN and
    the connection's job writes the rest; the log line of each answer has its full size."""
    www = tmp_path / "www"
    www.mkdir()
    data = bytes(range(256)) * (6 * 4096)
    (www / "big.bin").write_bytes(data)
    logfile = tmp_path / "big.log"
    text = f':8000 {{\n root {www}\n log / {logfile} "{{uri}} {{status}} {{size}}"\n}}\n'
    router = plan(load_text(text, "Caddyfile"))[8000].router()
    rests: list[int] = []
    keep = Connection._cached_file_sent

    def counted(self: Connection, hit: Any, now: float, sent: int | None, state: int) -> None:
        rests.append(state)
        keep(self, hit, now, sent, state)

    monkeypatch.setattr(Connection, "_cached_file_sent", counted)
    server = ServerThread(router, compiled=compiled)
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            bodies = []
            for _ in range(3):
                sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.2)  # the server fills the socket buffers and waits
                bodies.append(reader.response().body)
            got = log_lines(logfile, 3)
    finally:
        server.stop()
    assert bodies == [data] * 3
    assert got == [f"/big.bin 200 {len(data)}"] * 3
    assert SEND_AGAIN in rests  # the socket filled up: the rest went out as a job
