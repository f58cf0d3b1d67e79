"""The lane's rule table over sites with `ext`, `errors` and `basicauth` with an htpasswd file
(meshkit.web.ruletable, lanedeps): generated requests, with files appearing and going between
them, on a server reading with the compiled lane and its table and on one in Python get the
same statuses, headers (bar Date), bodies, access-log lines and error-log lines; and the
table answers the usual requests of such sites itself (its hit count), 404s and error pages
included. The response cache is off in both (the router's switch), so every answer is the
table's or the chain's. The tests of what such answers depend on (a file appearing, an
htpasswd file changing) run over both implementations (MESHKIT_NO_EXTENSIONS=1 too)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import fileserver, htpasswd, lane, ruletable
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect
from support.lanediff import Req, log_lines, plan_of, run
from support.polling import wait_until

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "Lane") and lane.LANE is not None
needs_lane = pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built or is off")
OLD = 1_600_000_000

LOG = ' log / LOGFILE "{remote} {user} {method} {uri} {proto} {status} {size} {path}"\n'
EXT = " ext .html .htm\n"
ERRORS = " errors {\n  404 404.html\n  * err.html\n  log ERRLOG\n }\n"
NO_PAGE = " errors {\n  404 nope.html\n  log ERRLOG\n }\n"
AUTH = (
    " basicauth /priv alice htpasswd=.htpasswd\n"
    " basicauth /priv bob htpasswd=.htpasswd\n"
    " basicauth /priv carol htpasswd=.htpasswd\n"
)
SITES = {
    "ext": EXT + LOG,
    "ext-errors": EXT + ERRORS + LOG,
    "errors-auth": ERRORS + AUTH + LOG,
    "ext-auth-nopage": EXT + AUTH + NO_PAGE + LOG,
}
FILES = {
    "index.html": b"<p>home</p>",
    "about.html": b"<p>about</p>",
    "guide.htm": b"<p>guide htm</p>",
    "both.html": b"<p>both html</p>",
    "both.htm": b"<p>both htm</p>",
    "docs/index.html": b"<p>docs</p>",
    "docs.html": b"<p>docs page</p>",
    "dir.html/index.html": b"<p>a folder named dir.html</p>",
    "sub/page.html": b"<p>sub page</p>",
    "data.txt": b"text",
    "404.html": b"<h1>not here</h1>",
    "err.html": b"<h1>error</h1>",
    "priv/secret.html": b"<p>secret</p>",
    "priv/index.html": b"<p>priv</p>",
}
# alice: {SHA}, bob: the password itself, carol: $apr1$ (slow: checked in a thread)
HTPASSWD = "".join(
    f"{user}:{entry}\n"
    for user, entry in (
        ("alice", htpasswd.sha1_entry("wonder")),
        ("bob", "builder"),
        ("carol", htpasswd.apr1("c4rol", "salt1234")),
    )
)
MUTABLE = ["missing.html", "guide.html", "about.html", "404.html", "sub/new.htm", "priv/x.html"]


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _stamp(path: Path, when: int) -> None:
    os.utime(path, (when, when))


def make_site(base: Path, extra: str) -> Router:
    www = base / "www"
    for name, data in FILES.items():
        (www / name).parent.mkdir(parents=True, exist_ok=True)
        (www / name).write_bytes(data)
        _stamp(www / name, OLD)
    (www / ".htpasswd").write_text(HTPASSWD)
    for d in [www, *[p for p in www.rglob("*") if p.is_dir()]]:
        _stamp(d, OLD)
    _stamp(www / ".htpasswd", OLD)
    extra = extra.replace("LOGFILE", str(base / "access.log")).replace(
        "ERRLOG", str(base / "error.log")
    )
    router = plan(load_text(f":8000 {{\n root {www}\n{extra}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    router.validated_responses = False  # the response cache off: the table or the chain
    return router


def mutate(www: Path, name: str, tick: int) -> None:
    """Make `name` appear (or go, when it exists), with timestamps both trees share; its
    folder's mtime moves to a value of its own (a change the folder's stat shows, even
    within one clock tick)."""
    path = www / name
    if path.exists():
        path.unlink()
    else:
        path.write_bytes(b"<p>new " + name.encode() + b"</p>" + b"!" * tick)
        _stamp(path, OLD + tick)
    _stamp(path.parent, OLD + tick)


def rule_hits_of(server: ServerThread) -> int:
    conns = server.run(lambda: list(server.server._conns))
    lanes = [getattr(c, "_lane", None) for c in conns]
    return sum(int(ln.rule_hits) for ln in lanes if ln is not None)


def _error_lines(path: Path) -> list[str]:
    """The error log without each line's time, its tree's folder as BASE."""
    if not path.exists():
        return []
    text = path.read_text().replace(str(path.parent), "BASE")
    return [ln.split(" ", 2)[-1] for ln in text.splitlines()]


class Pair:
    def __init__(self, base: Path, extra: str) -> None:
        self.base = base
        (base / "c").mkdir()
        (base / "py").mkdir()
        self.c = ServerThread(make_site(base / "c", extra), compiled=True)
        self.py = ServerThread(make_site(base / "py", extra), compiled=False)
        self.lines = 0
        self.tick = 0

    def mutate(self, name: str) -> None:
        self.tick += 1
        for side in ("c", "py"):
            mutate(self.base / side / "www", name, self.tick)

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()


@pytest.fixture(autouse=True)
def trust_fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    # every change here moves the timestamps itself (mutate): nothing is racy
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(scope="module", params=list(SITES), ids=list(SITES))
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    assert ruletable.ENABLED
    p = Pair(tmp_path_factory.mktemp("rulecov"), SITES[str(request.param)])
    yield p
    p.stop()


PATHS = [
    "/about",
    "/about?x=1",
    "/about/",
    "/about.html",
    "/guide",
    "/both",
    "/docs",
    "/docs/",
    "/dir",
    "/dir.html",
    "/sub/page",
    "/sub/new",
    "/sub/none",
    "/missing",
    "/missing.html",
    "/data",
    "/data.txt",
    "/no/such/dir/x",
    "/priv",
    "/priv/",
    "/priv/secret",
    "/priv/x",
    "/priv/nothing",
    "/.htpasswd",
    "/",
    "/index",
]
EXTRAS = [
    "",
    basic("alice", "wonder"),
    basic("alice", "wrong"),
    basic("bob", "builder"),
    basic("carol", "c4rol"),
    basic("carol", "nope"),
    basic("mallory", "x"),
    "If-None-Match: *",
    "Range: bytes=0-3",
]
request_st = st.tuples(
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(PATHS),
    st.just("1.1"),
    st.sampled_from(EXTRAS),
    st.integers(min_value=1, max_value=3),
    st.just(False),
)
step_st = st.one_of(
    st.lists(request_st, min_size=1, max_size=5),
    st.sampled_from(MUTABLE),
)


def raw(method: str, path: str, version: str, extra: str, close: bool) -> bytes:
    more = extra + "\r\n" if extra else ""
    return f"{method} {path} HTTP/{version}\r\nHost: t.example\r\n{more}\r\n".encode()


def _get(path: str, extra: str = "") -> list[Req]:
    return [("GET", path, "1.1", extra, 2, False)]


@needs_lane
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(step_st, min_size=1, max_size=6))
# what each pin is for: a missed extension appearing, a missing file appearing, the page
# going, a protected file appearing
@example([_get("/guide"), "guide.html", _get("/guide"), "guide.html", _get("/guide")])
@example([_get("/missing"), "missing.html", _get("/missing"), "missing.html", _get("/missing")])
@example([_get("/nope"), "404.html", _get("/nope"), "404.html", _get("/nope")])
@example([_get("/priv/x.html", basic("alice", "wonder")), "priv/x.html"] * 2)
def test_table_answers_like_the_chain(pair: Pair, steps: list[list[Req] | str]) -> None:
    for step in steps:
        if isinstance(step, str):
            pair.mutate(step)
            continue
        plan_ = plan_of(step, raw)
        got_c = run(pair.c, plan_)
        assert got_c == run(pair.py, plan_)
        pair.lines += len(got_c[0])
        log_c = log_lines(pair.base / "c" / "access.log", pair.lines)
        assert log_c == log_lines(pair.base / "py" / "access.log", pair.lines)
    # (lines are flushed from each server's loop after the answer: wait for both)
    err_c, err_py = pair.base / "c" / "error.log", pair.base / "py" / "error.log"
    wait_until(lambda: _error_lines(err_c) == _error_lines(err_py), timeout=3.0)
    assert _error_lines(err_c) == _error_lines(err_py)


def _answers(server: ServerThread, heads: list[bytes]) -> list[tuple[int, bytes]]:
    with connect(server.port) as sock:
        reader = Reader(sock)
        out = []
        for data in heads:
            sock.sendall(data)
            reply = reader.response("HEAD" if data.startswith(b"HEAD") else "GET")
            out.append((reply.status, reply.body))
    return out


@needs_lane
def test_ext_404_and_error_pages_come_from_the_table(tmp_path: Path) -> None:
    """`ext` answers, 404s of missing files and the errors page that replaces them are kept:
    their repeats are the table's."""
    server = ServerThread(make_site(tmp_path, EXT + ERRORS + LOG), compiled=True)
    heads = [raw("GET", p, "1.1", "", False) for p in ("/about", "/guide", "/missing", "/x/y/z")]
    try:
        first = _answers(server, heads)
        before = rule_hits_of(server)
        with connect(server.port) as sock:
            reader = Reader(sock)
            again = []
            for data in heads:
                sock.sendall(data)
                reply = reader.response()
                again.append((reply.status, reply.body))
            hits = rule_hits_of(server) - before
    finally:
        server.stop()
    assert first == [
        (200, FILES["about.html"]),
        (200, FILES["guide.htm"]),
        (404, FILES["404.html"]),
        (404, FILES["404.html"]),
    ]
    assert again == first
    assert hits == len(heads)
    assert len(log_lines(tmp_path / "access.log", 2 * len(heads))) == 2 * len(heads)


@pytest.mark.parametrize("site", [EXT + ERRORS, EXT], ids=["ext-errors", "ext"])
def test_a_file_appearing_changes_the_answer(tmp_path: Path, site: str) -> None:
    """An answer that depends on a file not being there (a 404, `ext` trying .html before
    .htm) changes as soon as it appears (on either implementation)."""
    server = ServerThread(make_site(tmp_path, site))
    www = tmp_path / "www"
    heads = [raw("GET", "/missing", "1.1", "", False), raw("GET", "/guide", "1.1", "", False)]
    try:
        before = _answers(server, heads + heads)
        mutate(www, "missing.html", 1)
        mutate(www, "guide.html", 2)
        after = _answers(server, heads)
        mutate(www, "404.html", 3)  # the page goes: the plain 404 (and an error log line)
        gone = _answers(server, heads[:1])
    finally:
        server.stop()
    page = FILES["404.html"] if "errors" in site else b"404 Not Found\n"
    assert before == [(404, page), (200, FILES["guide.htm"])] * 2
    assert after == [(200, b"<p>new missing.html</p>!"), (200, b"<p>new guide.html</p>!!")]
    assert gone == [(200, b"<p>new missing.html</p>!")]


def test_a_missing_error_page_logs_each_time(tmp_path: Path) -> None:
    """The error log line of a page that cannot be read is written for every request (an
    answer that writes one is never kept), once each."""
    server = ServerThread(make_site(tmp_path, NO_PAGE))
    try:
        got = _answers(server, [raw("GET", "/missing", "1.1", "", False)] * 3)
    finally:
        server.stop()
    assert got == [(404, b"404 Not Found\n")] * 3
    wait_until(lambda: len(_error_lines(tmp_path / "error.log")) >= 3, timeout=3.0)
    lines = _error_lines(tmp_path / "error.log")
    assert lines == ["[ERROR 404 /missing] cannot read error page BASE/www/nope.html"] * 3


def test_htpasswd_change_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A password passed from the htpasswd file is kept per Authorization value only while
    the file stats the same: after the file changes (and basicauth reads it again, at most a
    second later), the old password gets the 401 with the realm (either implementation)."""
    server = ServerThread(make_site(tmp_path, AUTH))
    head = raw("GET", "/priv/secret.html", "1.1", basic("alice", "wonder"), False)
    try:
        first = _answers(server, [head, head, head])
        path = tmp_path / "www" / ".htpasswd"
        path.write_text(HTPASSWD.replace(htpasswd.sha1_entry("wonder"), htpasswd.sha1_entry("w2")))
        _stamp(path, OLD + 5)
        time.sleep(1.1)  # basicauth checks the file at most once a second
        with connect(server.port) as sock:
            reader = Reader(sock)
            sock.sendall(head)
            denied = reader.response()
    finally:
        server.stop()
    assert first == [(200, FILES["priv/secret.html"])] * 3
    assert denied.status == 401
    assert denied.header("WWW-Authenticate") == 'Basic realm="Restricted"'


@needs_lane
def test_bcrypt_pass_is_kept_off_the_loop(tmp_path: Path) -> None:
    """A bcrypt entry: the first check runs in a thread (the chain's); once basicauth
    remembers the credentials, the table keeps the answer and repeats it."""
    entry = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    server = ServerThread(make_site(tmp_path, AUTH), compiled=True)
    path = tmp_path / "www" / ".htpasswd"
    text = path.read_text().replace("bob:builder", f"bob:{entry}")
    path.write_text(text)
    _stamp(path, OLD + 7)
    time.sleep(1.1)  # read again by basicauth
    head = raw("GET", "/priv/secret.html", "1.1", basic("bob", "s3cret"), False)
    try:
        first = _answers(server, [head])
        time.sleep(1.05)  # the table tries an unkept key again a second later
        before = rule_hits_of(server)
        with connect(server.port) as sock:
            reader = Reader(sock)
            got = []
            for _ in range(3):
                sock.sendall(head)
                got.append(reader.response().status)
            hits = rule_hits_of(server) - before
    finally:
        server.stop()
    assert first == [(200, FILES["priv/secret.html"])]
    assert got == [200, 200, 200]
    assert hits >= 2


def test_compiled_sites_include_ext_errors_and_htpasswd(tmp_path: Path) -> None:
    for i, extra in enumerate(SITES.values()):
        router = make_site(tmp_path / str(i), extra)
        assert ruletable.compile_router(router) is not None
