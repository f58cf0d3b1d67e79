"""A site with `header`, `basicauth`, `rewrite`, `redir` and `log` whose rules depend on the
request head alone is answered from remembered responses (meshkit.web.respcache), with the
same bytes bar Date and the same log lines as when every request runs the handlers; rules
that depend on more (the client address, a file tried, an htpasswd file) keep it uncached.
Both send paths (C and Python)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.message import Request, Response
from meshkit.web.router import Router
from support.httpserver_util import Reader, ServerThread, connect, get
from support.polling import wait_until

OLD = 1_600_000_000
AUTH = "Authorization: Basic " + base64.b64encode(b"alice:s3cret").decode() + "\r\n"


@pytest.fixture(autouse=True)
def _fresh_folders(trust_fresh_folders: None) -> None:
    """Every test here: see tests/web/conftest.py."""


class Counting:
    """The router, counting the requests that reach the handlers."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.validated_responses = router.validated_responses
        self.calls = 0

    def __call__(self, request: Request) -> object:
        self.calls += 1
        return self.router(request)


RULES = """ header / X-Frame-Options DENY
 header / X-Host "{host} {>X-Tag}"
 header / -Server
 basicauth /a.txt alice s3cret
 rewrite /p/page /a.txt
 redir /old /new 301
 log / {log} "{remote} {user} {method} {uri} {status} {size}"
"""


def rule_site(tmp_path: Path, rules: str = RULES) -> Counting:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "a.txt").write_bytes(b"hello")
    os.utime(www / "a.txt", (OLD, OLD))
    os.utime(www, (OLD, OLD))
    text = f":8000 {{\n root {www}\n" + rules.replace("{log}", str(tmp_path / "a.log")) + "}\n"
    router = plan(load_text(text, "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    return Counting(router)


def lines(path: Path, n: int) -> list[str]:
    assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= n)
    return path.read_text().splitlines()


Reply = tuple[int, list[tuple[str, str]], bytes]


def exchange(st: ServerThread, requests: list[bytes]) -> list[Reply]:
    out = []
    with connect(st.port) as sock:
        reader = Reader(sock)
        for raw in requests:
            sock.sendall(raw)
            reply = reader.response()
            heads = [(k, v) for k, v in reply.headers if k.lower() != "date"]
            out.append((reply.status, heads, reply.body))
    return out


REQUESTS = [
    get("/p/page", extra=AUTH + "X-Tag: t1\r\n"),
    get("/p/page", extra=AUTH + "X-Tag: t1\r\n"),
    get("/p/page", extra=AUTH + "X-Tag: t1\r\n"),
    get("/p/page", extra="X-Tag: t1\r\n"),  # no credentials: 401 (auth after rewrite)
    get("/old"),
    get("/old"),
    get("/a.txt", extra=AUTH + "X-Tag: t2\r\n"),
    get("/a.txt", extra=AUTH + "X-Tag: t2\r\n"),
]


def test_rule_site_is_static_and_answers_like_the_handlers(
    serve: Callable[..., ServerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_dir, plain_dir = tmp_path / "cached", tmp_path / "plain"
    cached_dir.mkdir()
    plain_dir.mkdir()
    cached = rule_site(cached_dir)
    assert [r.static for r in cached.router.routes] == [True]
    got = exchange(serve(cached), REQUESTS)
    monkeypatch.setenv("MESHKIT_NO_RESPCACHE", "1")
    plain = rule_site(plain_dir)
    assert not plain.validated_responses
    want = exchange(serve(plain), REQUESTS)
    assert got == want
    status, heads, body = got[0]
    assert status == 200 and body == b"hello"
    assert ("X-Host", "t.example t1") in [(k, v) for k, v in heads]
    assert "Server" not in [k for k, _ in heads]
    assert [g[0] for g in got] == [200, 200, 200, 401, 301, 301, 200, 200]
    # the repeats of /p/page and /a.txt came from remembered responses; every request of
    # the uncached site ran the handlers
    assert plain.calls == len(REQUESTS)
    assert cached.calls == len(REQUESTS) - 3
    n = len(REQUESTS)
    logged = lines(cached_dir / "a.log", n)
    assert logged == lines(plain_dir / "a.log", n)
    assert logged[0] == "127.0.0.1 alice GET /p/page 200 5"
    assert logged[3] == "127.0.0.1 - GET /p/page 401 17"


@pytest.mark.parametrize(
    ("rules", "static"),
    [
        (" header / X-A b\n", True),
        (" header / X-A {>Origin}{host}{path}{?q}{~c}{label1}\n", True),
        (" header / X-A {remote}\n", False),
        (" header / X-A {when}\n", False),
        (" header / X-A {<Content-Type}\n", False),
        (" header / X-A {user}\n", False),
        (" rewrite /x /a.txt\n", True),
        (" rewrite /x /{>X-Dest}\n", True),
        (" rewrite /x /b.txt /a.txt\n", False),
        (" rewrite / {\n  if {remote} is 192.0.2.1\n  to /a.txt\n }\n", False),
        (" rewrite / {\n  if {>X} is y\n  to /a.txt\n }\n", True),
        (" redir /y /a.txt\n", True),
        (" redir {\n  if {port} is 1\n  /y /a.txt\n }\n", False),
        (" basicauth /p u pw\n", True),
        (" status 404 /hidden\n status 200 /health\n", True),
    ],
)
def test_which_rules_keep_a_site_static(tmp_path: Path, rules: str, static: bool) -> None:
    site = rule_site(tmp_path, rules)
    assert [r.static for r in site.router.routes] == [static]


def test_htpasswd_basicauth_is_not_static(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "pw").write_text("u:plain\n")
    site = rule_site(tmp_path, " basicauth /p u htpasswd=pw\n")
    assert [r.static for r in site.router.routes] == [False]


def test_no_respcache_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Router().validated_responses
    monkeypatch.setenv("MESHKIT_NO_RESPCACHE", "1")
    assert not Router().validated_responses


def test_compiled_rules_answer_as_rendered(tmp_path: Path) -> None:
    """The literal forms compiled at load (redir targets, rewrite destinations, header
    values) give what rendering per request gives."""
    from meshkit.web.directives.redir import redirect_response

    site = rule_site(
        tmp_path, " redir /o /n%20x?a=1 302\n rewrite /q /a%2Etxt?z=2\n header / +X-B v\n"
    )
    r = Request("GET", "/o", "/o", host="h")
    resp = site(r)
    assert isinstance(resp, Response)
    want = redirect_response(Request("GET", "/o", "/o"), "/n%20x?a=1", 302)
    assert (resp.status, resp.body) == (want.status, want.body)
    assert resp.headers.items() == [*want.headers.items(), ("X-B", "v")]
    head = site(Request("HEAD", "/o", "/o", host="h"))
    assert isinstance(head, Response) and head.headers.get("Content-Type")
    post = site(Request("POST", "/o", "/o", host="h"))
    assert isinstance(post, Response) and post.body == b"" and post.status == 302
    req = Request("GET", "/q?k=1", "/q", "k=1", host="h")
    resp = site(req)
    assert (req.path, req.query, req.uri) == ("/a.txt", "z=2", "/a.txt?z=2")
    assert isinstance(resp, Response) and resp.status == 200
