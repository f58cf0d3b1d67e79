"""Requests with a small body on the FastCGI lane (_fcgilane.pxi _fl_take_body +
meshkit.web.bodyhead) against its twin, the Python handler chain: generated POST,
PUT and PATCH requests with bodies of many sizes (1 byte to 64 KiB, across the 65535-byte
STDIN record cut) on keep-alive connections to two servers over the same `fastcgi` site in
front of one real php-fpm, one server reading with the compiled lanes and one in Python,
get the same statuses, headers (bar Date), bodies and access-log lines. The scripts echo the
body php read, its length and md5, $_POST and every PARAM php saw (CONTENT_LENGTH and
CONTENT_TYPE among them). Heads the lane must leave to the chain (chunked, Expect, two
Content-Lengths, Content-Length with Transfer-Encoding, an invalid length, a body that
comes in a later read, a pipelined request, a body over 64 KiB) are answered the same by
both, and not taken; a body read behind the first 64 KiB read is taken."""

from __future__ import annotations

import hashlib
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
from meshkit.web.fastcgi import clientlane
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect
from support.lanediff import Seen, TwinServers
from support.php_fpm import php_fpm, php_fpm_binary

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
    "echo.php": "<?php $b = file_get_contents('php://input');"
    " header('X-Len: ' . strlen($b)); header('X-Md5: ' . md5($b));"
    " echo $_SERVER['REQUEST_METHOD'], ' ', $_SERVER['CONTENT_LENGTH'] ?? '-', ' ',"
    " $_SERVER['CONTENT_TYPE'] ?? '-', \"\\n\";"
    # the body itself when short (a long reply's framing, whole or streamed, depends on
    # how php-fpm's writes were read: X-Len and X-Md5 prove the long ones)
    " if (strlen($b) <= 4096) { echo $b; }",
    "form.php": "<?php ksort($_POST); $j = json_encode($_POST);"
    ' echo strlen($j) <= 4096 ? $j : md5($j), "\\n";'
    " echo $_SERVER['CONTENT_LENGTH'] ?? '-', ' ', $_SERVER['HTTP_X_A'] ?? '-';",
    # every PARAM php saw, bar what differs per connection and server
    "env.php": "<?php $s = $_SERVER; foreach (['REMOTE_PORT', 'SERVER_PORT', 'REQUEST_TIME',"
    " 'REQUEST_TIME_FLOAT'] as $k) { unset($s[$k]); } ksort($s);"
    " foreach ($s as $k => $v) { echo $k, '=', is_string($v) ? $v : json_encode($v), \"\\n\"; }",
    "code.php": "<?php http_response_code(201); header('Location: /made');"
    " echo strlen(file_get_contents('php://input'));",
}

TYPES = [
    "",
    "Content-Type: application/x-www-form-urlencoded\r\n",
    "Content-Type: text/plain; charset=utf-8\r\n",
    "X-A: 1\r\nContent-Type: application/octet-stream\r\n",
]


def raw(method: str, path: str, extra: str, body: bytes, length: str | None = None) -> bytes:
    cl = f"Content-Length: {len(body) if length is None else length}\r\n"
    head = f"{method} {path} HTTP/1.1\r\nHost: t.example\r\n{cl}{extra}\r\n".encode()
    return head + body


def stats() -> tuple[int, int]:
    """(requests the lane took, of those with a body)."""
    assert _fastpath is not None
    s = _fastpath.fcgi_lane_stats()
    return int(s[2]), int(s[8])


def make_router(base: Path, root: Path, endpoint: str) -> tuple[Router, Path]:
    logfile = base / "access.log"
    site = f" root {root}\n fastcgi / {endpoint} php\n"
    site += f' log / {logfile} "{{method}} {{uri}} {{status}} {{size}} {{>Content-Length}}"\n'
    router = plan(load_text(f":8000 {{\n{site}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return router, logfile


class Pair(TwinServers):
    """The same site on a compiled server and a Python one."""

    def __init__(self, base: Path, root: Path, endpoint: str) -> None:
        super().__init__(base, lambda d: make_router(d, root, endpoint))


@pytest.fixture(scope="module", params=["tcp", "unix"])
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("fcgibody")
    root = base / "root"
    root.mkdir()
    for name, text in SCRIPTS.items():
        (root / name).write_text(text)
    (base / "pair").mkdir()
    # children for every connection both servers may keep (a php-fpm child serves one
    # connection until it closes): a dial past them would wait in the backlog
    with php_fpm(base / "fpm", children=8) as f:
        endpoint = f.tcp if request.param == "tcp" else f.unix
        p = Pair(base / "pair", root, endpoint)
        try:
            yield p
        finally:
            p.stop()


body_st = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=1, max_value=MAX_BODY).map(lambda n: bytes(i % 251 for i in range(n))),
    st.sampled_from([b"a=1&b=two+words&c[]=x&c[]=y", b"x" * 65535, b"y" * 65536, b"z" * 65537]),
)
request_st = st.tuples(
    st.sampled_from(["POST", "PUT", "PATCH"]),
    st.sampled_from(["/echo.php", "/form.php", "/code.php", "/echo.php/more?q=1", "/env.php"]),
    st.sampled_from(TYPES),
    body_st,
    st.integers(min_value=1, max_value=2),  # how many times it is sent, one by one
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=4))
def test_bodies_like_the_twin(pair: Pair, reqs: list[tuple[str, str, str, bytes, int]]) -> None:
    pair.both([raw(m, p, e, b) for m, p, e, b, times in reqs for _ in range(times)])


def test_lane_takes_posts(pair: Pair) -> None:
    """A repeated form POST (about 1 KB) and a 60 KiB one are sent by the lane once a
    connection is kept, and php read every byte."""
    form = b"&".join(b"f%d=%s" % (i, b"v" * 20) for i in range(40))
    big = bytes(i % 251 for i in range(60000))
    reqs = [
        raw("POST", "/form.php", TYPES[1] + "X-A: 7\r\n", form),
        raw("POST", "/echo.php", TYPES[3], big),
    ] * 4
    before, before_bodies = stats()
    got = pair.both(reqs)
    taken, bodies = stats()
    assert bodies - before_bodies >= 4 and taken - before >= 4
    assert got[0][2].startswith(b'{"f0":"' + b"v" * 20)
    assert got[0][2].endswith(b"\n%d 7" % len(form))
    assert got[1][2] == b"POST 60000 application/octet-stream\n"
    assert ("X-Md5", hashlib.md5(big).hexdigest()) in got[1][1]


def _send_split(st_: ServerThread, head: bytes, body: bytes) -> Seen:
    """The head in one write, the body after a pause in another (two reads)."""
    with connect(st_.port) as sock:
        sock.sendall(head)
        time.sleep(0.1)  # not a timing assertion: only so that the body is a second read
        sock.sendall(body)
        reply = Reader(sock).response()
        return reply.status, [(k, v) for k, v in reply.headers if k.lower() != "date"], reply.body


@pytest.mark.parametrize(
    "data",
    [
        # the smuggling rules of web/http1.py: the same 400 (or 417, 501) as today
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nExpect: other\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",  # no Host
        b"POST /echo.php HTTP/1.0\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length:  0003 \r\n\r\nabc",
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        # a pipelined second request after the body, and a body over 64 KiB
        raw("POST", "/echo.php", "", b"abc") + raw("POST", "/echo.php", "", b"de"),
        raw("POST", "/echo.php", "", b"q" * (MAX_BODY + 1)),
    ],
)
def test_left_to_the_chain_or_same(pair: Pair, data: bytes) -> None:
    """Heads outside the lane's shape are answered by both servers alike (refusals by the
    connection, before the site: no log line); all but the leading-zero length (a plain
    Content-Length, so planned) are not taken by the lane."""
    before = stats()[1]
    pair.both([data], refusals=True)
    if b"0003" not in data:
        assert stats()[1] == before


def test_body_behind_the_read(pair: Pair) -> None:
    """A head and a body too long for the one read (64 KiB): the lane reads the body's
    rest from the socket at once and sends it (STDIN cut into two records, 65535 + 1)."""
    body = bytes(i % 241 for i in range(MAX_BODY))
    data = raw("POST", "/echo.php", "", body)
    assert len(data) > 65536  # the client lane's read
    pair.both([data])  # the first one may dial
    got: list[list[Seen]] = []
    before = stats()[1]
    for st_ in (pair.c, pair.py):
        # the server's loop held while the request is written: it is all in the socket
        # when the first read comes (not a timing assertion: only to make it one burst)
        st_.loop.call_soon_threadsafe(time.sleep, 0.2)
        got.append(pair.run(st_, [data]))
    assert got[0] == got[1]
    assert ("X-Md5", hashlib.md5(body).hexdigest()) in got[0][0][1]
    assert stats()[1] == before + 1
    pair.lines += 1
    pair.both([raw("POST", "/echo.php", "", b"x")])  # and the log lines agree


def test_body_in_two_reads(pair: Pair) -> None:
    """A body that comes after its head in a second read, later: the chain reads it (the
    lane found nothing behind the head), with the same answer."""
    head, body = raw("POST", "/echo.php", "", b"0123456789").split(b"\r\n\r\n", 1)
    before = stats()[1]
    got_c = _send_split(pair.c, head + b"\r\n\r\n", body)
    got_py = _send_split(pair.py, head + b"\r\n\r\n", body)
    assert got_c == got_py and got_c[2].endswith(b"0123456789")
    assert stats()[1] == before
    pair.lines += 1
    pair.both([raw("POST", "/echo.php", "", b"x")])  # and the two log lines agree
