"""The compiled lane's rule table (meshkit.web.ruletable, _lanerules.pxi) against its twin,
the Python handler chain: generated request sequences on keep-alive connections to two
servers over copies of one site (generated too: which directives, which index names), one
reading with the lane and its rule table and one in Python, get the same statuses, headers
(bar Date), bodies and closes. The response cache is off in both (MESHKIT_NO_RESPCACHE's
switch on the router), so every answer is the table's or the chain's."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import fileserver, lane, ruletable
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.filecache import base36
from meshkit.web.http1 import http_date
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect
from support.lanediff import Req, log_lines, plan_of, run

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "Lane")
pytestmark = pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
OLD = 1_600_000_000
A_TXT = b"hello, rules"
ETAG = f'"{base36(OLD * 1_000_000_000)}{base36(len(A_TXT))}"'

# site variants: the directives beside root (all compiled by the table, with the chain
# answering the browse and markdown scopes)
LOG_FORMAT = "{remote} {user} {method} {uri} {proto} {status} {size} {path}"
RULES = """ header / X-Frame-Options DENY
 header /sub +X-Sub yes
 header / -Server
 redir /old /new 301
 redir /temp /elsewhere 302
 rewrite ^/page$ /a.txt
 rewrite ^/home$ /deep/er/index.html
 basicauth /sub alice s3cret
 basicauth /deep bob hunter2
 log / LOGFILE "LOGFORMAT"
""".replace("LOGFORMAT", LOG_FORMAT)
# placeholders whose values are functions of the key (the target and Host): compiled
KEYED = """ header / X-Uri "{uri} {path} {query} {?x}"
 header /sub X-Host "{host} {hostonly} {label1} {file} {dir}"
 rewrite ^/p/(.*)$ /deep/{1}
 rewrite {
  if {query} has swap
  r ^/q$
  to /a.txt
 }
 redir /go /new{uri} 301
 redir 301 {
  if {path} is /cond
  if {host} starts_with h2.
  /cond /a.txt
 }
"""
SITES = {
    "plain": "",
    "keyed": KEYED,
    "gzip-browse": " gzip\n browse /sub\n",
    "index": " index home.html index.html\n",
    "markdown-mime": " markdown /md\n mime .bin application/x-lane\n",
    "rules-log": RULES,
    "status-internal": " status 403 /noindex\n status 200 /deep/er/x\n internal /sub\n",
}


def make_site(base: Path, extra: str) -> Router:
    www = base / "www"
    for d in ("sub", "md", "noindex", "deep/er"):
        (www / d).mkdir(parents=True)
    files = {
        "a.txt": A_TXT,
        "index.html": b"<p>home</p>",
        "home.html": b"<p>home 2</p>",
        "sub/index.html": b"<p>sub</p>",
        "deep/er/index.html": b"<p>deeper</p>",
        "md/doc.md": b"# title\n\ntext\n",
        "noindex/x.bin": b"\x00\x01",
        "big.bin": bytes(range(256)) * 160,  # sent with sendfile
        "data.unknownext": b"plain text, sniffed",
        ".hidden": b"dot",
    }
    for name, data in files.items():
        (www / name).write_bytes(data)
        os.utime(www / name, (OLD, OLD))
    extra = extra.replace("LOGFILE", str(base / "access.log"))
    text = f":8000 {{\n root {www}\n{extra}}}\n"
    router = plan(load_text(text, "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    router.validated_responses = False  # the response cache off: the table or the chain
    return router


def rule_hits_of(server: ServerThread) -> int:
    """Requests the rule tables of the server's open connections' lanes answered."""
    conns = server.run(lambda: list(server.server._conns))
    lanes = [getattr(c, "_lane", None) for c in conns]
    return sum(int(ln.rule_hits) for ln in lanes if ln is not None)


class Pair:
    def __init__(self, base: Path, extra: str) -> None:
        (base / "c").mkdir()
        (base / "py").mkdir()
        self.c = ServerThread(make_site(base / "c", extra), compiled=True)
        self.py = ServerThread(make_site(base / "py", extra), compiled=False)
        self.log_c = base / "c" / "access.log"
        self.log_py = base / "py" / "access.log"
        self.logged = "log /" in extra
        self.lines = 0

    def rule_hits(self) -> int:
        return rule_hits_of(self.c)

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()


@pytest.fixture(autouse=True)
def trust_fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(scope="module", params=list(SITES), ids=list(SITES))
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    assert lane.LANE is not None and ruletable.ENABLED
    p = Pair(tmp_path_factory.mktemp("rules"), SITES[str(request.param)])
    yield p
    p.stop()


PATHS = [
    "/",
    "/a.txt",
    "/a.txt?x=1",
    "/a.txt/",
    "/sub",
    "/sub?q=1",
    "/sub/",
    "/sub/index.html",
    "/sub/index.html?a=b",
    "/index.html",
    "/home.html",
    "/deep/er/",
    "/deep/er",
    "/noindex/",
    "/noindex/x.bin",
    "/missing",
    "/big.bin",
    "/data.unknownext",
    "/.hidden",
    "/a%2etxt",
    "//a.txt",
    "/sub//index.html",
    "/sub/./index.html",
    "/sub/../a.txt",
    "/a.txt?x=//y/./z",
    "/md/doc.md",
    "/md/",
    "/page",
    "/page?x=1",
    "/home",
    "/old",
    "/old?q=2",
    "/temp",
    "/p/er/",
    "/p/er/index.html",
    "/p/nothing",
    "/go",
    "/go?x=1",
    "/cond",
    "/q?swap",
    "/q",
    "/a.txt?x=y&swap=1",
]
HOSTS = ["t.example", "h2.example:8000", "T.EXAMPLE"]
EXTRAS = [
    "",
    "Range: bytes=0-3\r\n",
    f"If-None-Match: {ETAG}\r\n",
    f"If-None-Match:  {ETAG} \r\n",
    'If-None-Match: "nope"\r\n',
    f"If-None-Match: W/{ETAG}\r\n",
    f'If-None-Match: "x", {ETAG}\r\n',
    "If-None-Match: *\r\n",
    f"If-Modified-Since: {http_date(OLD)}\r\n",
    "If-Modified-Since: Sun, 06 Dec 2099 00:00:00 GMT\r\n",
    f'If-None-Match: "nope"\r\nIf-Modified-Since: {http_date(OLD)}\r\n',
    "Accept-Encoding: gzip\r\n",
    "X-Other: 1\r\nUser-Agent: t\r\n",
    "Expect: 100-continue\r\n",
    "Range: bytes=0-1,5-6\r\n",
    f"Range: bytes=2-\r\nIf-Range: {ETAG}\r\n",
    "Accept-Encoding: br\r\n",
    "Authorization: Basic " + base64.b64encode(b"alice:s3cret").decode() + "\r\n",
    "Authorization: Basic " + base64.b64encode(b"bob:hunter2").decode() + "\r\n",
    "Authorization: Basic " + base64.b64encode(b"alice:wrong").decode() + "\r\n",
    "authorization:  basic " + base64.b64encode(b"alice:s3cret").decode() + "\r\n",
]

request_st = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.sampled_from(PATHS),
    st.sampled_from(["1.1", "1.0"]),
    st.one_of(
        st.sampled_from(EXTRAS),
        st.sampled_from(HOSTS[1:]).map(lambda h: f"Host: {h}\r\n"),
    ),
    st.integers(min_value=1, max_value=2),  # how many times it is sent, one by one
    st.booleans(),  # the last request asks to close
)


def raw(method: str, path: str, version: str, extra: str, close: bool) -> bytes:
    keep = "Connection: keep-alive\r\n" if version == "1.0" and not close else ""
    closing = "Connection: close\r\n" if close else ""
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    host = "Host: t.example\r\n"
    if extra.startswith("Host: "):  # another Host value instead
        host, extra = extra, ""
    return (f"{method} {path} HTTP/{version}\r\n{host}{extra}{length}{keep}{closing}\r\n").encode()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(request_st, min_size=1, max_size=6))
def test_rule_table_answers_like_the_chain(pair: Pair, reqs: list[Req]) -> None:
    plan_ = plan_of(reqs, raw)
    got_c = run(pair.c, plan_)
    assert got_c == run(pair.py, plan_)
    if pair.logged:
        pair.lines += len(got_c[0])
        assert log_lines(pair.log_c, pair.lines) == log_lines(pair.log_py, pair.lines)


def test_rule_table_answers_files_redirects_and_304s(pair: Pair) -> None:
    """The table answers the common requests itself (its hit count), each as the chain."""
    bob = "Authorization: Basic " + base64.b64encode(b"bob:hunter2").decode() + "\r\n"
    heads = [
        raw("GET", "/a.txt", "1.1", bob, False),
        raw("HEAD", "/a.txt", "1.1", bob, False),
        raw("GET", "/big.bin", "1.1", bob, False),
        raw("GET", "/deep/er/index.html", "1.1", bob, False),  # the canonical 301
        raw("GET", "/deep/er", "1.1", bob, False),  # a folder's missing slash
        raw("GET", "/a.txt", "1.1", f"If-None-Match: {ETAG}\r\n" + bob, False),
        raw("GET", "/a.txt", "1.1", "User-Agent: other\r\nCookie: c=1\r\n" + bob, False),
    ]
    plan_ = [(h, "HEAD" if h.startswith(b"HEAD") else "GET") for h in heads]
    before = pair.rule_hits()
    with connect(pair.c.port) as sock:
        reader = Reader(sock)
        statuses = []
        for data, method in plan_:
            sock.sendall(data)
            statuses.append(reader.response(method).status)
        hits = pair.rule_hits() - before
    assert statuses == [200, 200, 200, 301, 301, 304, 200]
    assert hits == len(plan_)


def test_changed_file_is_answered_anew(tmp_path: Path) -> None:
    """The answer's validator: a file written again (new size and mtime) is read again, and
    a file gone is the chain's 404."""
    router = make_site(tmp_path, "")
    server = ServerThread(router, compiled=True)
    www = tmp_path / "www"
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            sock.sendall(raw("GET", "/a.txt", "1.1", "", False))
            first = reader.response()
            (www / "a.txt").write_bytes(b"changed!")
            sock.sendall(raw("GET", "/a.txt", "1.1", "", False))
            second = reader.response()
            (www / "a.txt").unlink()
            sock.sendall(raw("GET", "/a.txt", "1.1", "", False))
            third = reader.response()
            (www / "sub" / "index.html").unlink()
            sock.sendall(raw("GET", "/sub/index.html", "1.1", "", False))
            fourth = reader.response()
    finally:
        server.stop()
    assert (first.status, first.body) == (200, A_TXT)
    assert (second.status, second.body) == (200, b"changed!")
    assert second.header("ETag") != first.header("ETag")
    assert third.status == 404
    assert fourth.status == 404


def test_sites_the_table_cannot_express_stay_with_the_chain(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    text = (
        f":8000 {{\n root {www}\n header / X-A {{remote}}\n}}\n"
        f":8001 {{\n root {www}\n browse /\n header / X-A b\n}}\n"
        f':8002 {{\n root {www}\n log / {tmp_path / "x.log"} "{{>User-Agent}}"\n}}\n'
        f":8003 {{\n root {www}\n redir /a /b {{\n  if {{>User-Agent}} is x\n }}\n}}\n"
    )
    plans = plan(load_text(text, "Caddyfile"))
    assert ruletable.compile_router(plans[8000].router()) is None  # not in the key
    assert ruletable.compile_router(plans[8002].router()) is None  # a request field
    assert ruletable.compile_router(plans[8003].router()) is None  # a condition on a field
    compiled = ruletable.compile_router(plans[8001].router())
    assert compiled is not None
    (rules,) = compiled.values()
    assert rules.python_prefixes == ("/",)


def test_reload_answers_from_the_new_chain(tmp_path: Path) -> None:
    """A reload (HttpServer.set_handler) on an open connection: the next request is the new
    chain's, and the old chain's answers are forgotten (their files closed)."""
    old = make_site(tmp_path / "old", "")
    new = make_site(tmp_path / "new", " header / X-New yes\n")
    server = ServerThread(old, compiled=True)
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            sock.sendall(raw("GET", "/a.txt", "1.1", "", False))
            before = reader.response()
            compiled = ruletable.rules_for(old)
            assert compiled is not None
            (rules,) = compiled.values()
            assert len(rules.answers) == 1
            server.run(lambda: server.server.set_handler(new))
            sock.sendall(raw("GET", "/a.txt", "1.1", "", False))
            after = reader.response()
            hits = rule_hits_of(server)
    finally:
        server.stop()
    assert before.header("X-New") is None
    assert after.header("X-New") == "yes"
    assert after.body == A_TXT
    assert len(rules.answers) == 0
    assert hits == 2


def test_redir_answers_come_from_the_table(tmp_path: Path) -> None:
    """A literal `redir` 301 is kept (a function of the path); a 302 is the chain's."""
    router = make_site(tmp_path, " redir /old /new 301\n redir /temp /elsewhere 302\n")
    server = ServerThread(router, compiled=True)
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            got = []
            for path in ("/old", "/old", "/temp"):
                sock.sendall(raw("GET", path, "1.1", "", False))
                got.append(reader.response())
            hits = rule_hits_of(server)
    finally:
        server.stop()
    assert [(r.status, r.header("Location")) for r in got] == [
        (301, "/new"),
        (301, "/new"),
        (302, "/elsewhere"),
    ]
    assert got[0].body == got[1].body != b""
    assert hits == 2


def test_placeholders_of_the_key_are_answered_from_the_table(tmp_path: Path) -> None:
    """`header`, `rewrite` and `redir` with placeholders of the target and Host (and `if`s on
    them) compile; each key gets its own answer, repeated from the table."""
    router = make_site(tmp_path, KEYED)
    assert ruletable.compile_router(router) is not None
    server = ServerThread(router, compiled=True)
    heads = [
        raw("GET", "/sub/?x=1", "1.1", "", False),
        raw("GET", "/sub/?x=1", "1.1", "Host: h2.example:8000\r\n", False),
        raw("GET", "/sub/?x=2", "1.1", "", False),
        raw("GET", "/p/er/index.html", "1.1", "", False),  # {1}: the canonical 301
        raw("GET", "/go?x=1", "1.1", "", False),
        raw("GET", "/cond", "1.1", "Host: h2.example:8000\r\n", False),
        raw("GET", "/cond", "1.1", "", False),
    ]
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            got = []
            for data in heads + heads:
                sock.sendall(data)
                got.append(reader.response())
            hits = rule_hits_of(server)
    finally:
        server.stop()
    first, again = got[: len(heads)], got[len(heads) :]
    assert [(r.status, r.body) for r in first] == [(r.status, r.body) for r in again]
    assert [r.header("X-Host") for r in first[:3]] == [
        "t.example t.example t  /sub/",
        "h2.example:8000 h2.example h2  /sub/",
        "t.example t.example t  /sub/",
    ]
    assert [r.header("X-Uri") for r in first[:3]] == [
        "/sub/?x=1 /sub/ x=1 1",
        "/sub/?x=1 /sub/ x=1 1",
        "/sub/?x=2 /sub/ x=2 2",
    ]
    assert [(r.status, r.header("Location")) for r in first[3:]] == [
        (301, "/p/er/"),
        (301, "/new/go?x=1"),
        (301, "/a.txt"),
        (404, None),
    ]
    assert hits == 2 * len(heads)  # every answer, the 404 of a missing file too (lanedeps)


def test_unkept_answers_are_not_tried_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key whose answer cannot be kept (a 401) runs the chain for each request, and the
    table's own run of it (ruletable.fill) at most once a second."""
    fills: list[bytes] = []
    keep = ruletable.fill

    def counted(rules: ruletable.SiteRules, key: bytes, *args: object) -> object:
        fills.append(key)
        return keep(rules, key, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ruletable, "fill", counted)
    server = ServerThread(make_site(tmp_path, " basicauth /sub alice s3cret\n"), compiled=True)
    try:
        with connect(server.port) as sock:
            reader = Reader(sock)
            statuses = []
            for _ in range(4):
                sock.sendall(raw("GET", "/sub/", "1.1", "", False))
                statuses.append(reader.response().status)
    finally:
        server.stop()
    assert statuses == [401] * 4
    assert 1 <= len(fills) <= 2  # (two when the requests straddle a second)
