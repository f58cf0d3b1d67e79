"""The middleware directives in-process: Caddyfile text -> real parser -> handler chain around a
tiny `next` -> Response. limits, log, rewrite, gzip, header, errors, basicauth, redir, status.
"""

from __future__ import annotations

import asyncio
import base64
import gzip as gzip_mod
import os
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.web import logfile
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.directives.gzip import GzipStream, accepts_gzip
from meshkit.web.directives.limits import parse_size
from meshkit.web.htpasswd import apr1, sha1_entry
from meshkit.web.message import (
    BodyTooLarge,
    EmptyBody,
    FileBody,
    Handler,
    HandlerResult,
    Headers,
    Request,
    Response,
    resolve,
)
from meshkit.web.site import Site

REMOTE = "192.0.2.10"


@pytest.fixture(autouse=True)
def _close_sinks() -> Iterator[None]:
    yield
    logfile.close_all()


# --- helpers --------------------------------------------------------------------------------


def load_site(body: str, root: Path) -> Site:
    config = load_text(f":2015 {{\n    root {root}\n{body}\n}}\n")
    config.raise_errors()
    return config.sites[0]


def load_errors(body: str, root: Path) -> list[str]:
    config = load_text(f":2015 {{\n    root {root}\n{body}\n}}\n")
    return [str(e) for e in config.errors]


def req(
    path: str = "/",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    query: str = "",
    body: bytes | None = None,
) -> Request:
    uri = quote(path) + ("?" + query if query else "")
    return Request(
        method=method,
        uri=uri,
        path=path,
        query=query,
        headers=Headers([("Host", "example.com"), *(headers or [])]),
        body=EmptyBody(body) if body is not None else EmptyBody(),
        host="example.com",
        remote_addr=REMOTE,
        remote_port=40000,
        server_port=2015,
    )


class Echo:
    """The inner handler: answers 200 with the path and query it saw."""

    def __init__(self, response: Callable[[Request], Response] | None = None) -> None:
        self.seen: list[Request] = []
        self.response = response

    def __call__(self, request: Request) -> HandlerResult:
        self.seen.append(request)
        if self.response is not None:
            return self.response(request)
        text = request.path + ("?" + request.query if request.query else "")
        return Response.text(200, text)


def async_next(inner: Handler) -> Handler:
    async def later(request: Request) -> Response:
        await asyncio.sleep(0)
        return await resolve(inner(request))

    return later


def chain(body: str, root: Path, last: Handler | None = None) -> Handler:
    return build_chain(load_site(body, root), last or Echo())


def call(handler: Handler, request: Request) -> Response:
    result = handler(request)
    if isinstance(result, Response):
        return result
    return asyncio.run(resolve(result))


def complete(request: Request, response: Response, sent: int | None = None) -> None:
    """What the server does once the response is written."""
    if sent is None:
        sent = len(response.body) if isinstance(response.body, bytes) else 0
    for cb in request.on_complete:
        cb(request, response, sent)


def auth(user: str, password: str) -> tuple[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return ("Authorization", f"Basic {token}")


# --- limits ---------------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("100") == 100
    assert parse_size("10b") == 10
    assert parse_size("2KB") == 2048
    assert parse_size("3mb") == 3 * 1024 * 1024
    assert parse_size("1GB") == 1024**3
    assert parse_size("1TB") is None
    assert parse_size("x") is None


def test_limits_single_size_sets_header_and_body(tmp_path: Path) -> None:
    site = load_site("    limits 1KB", tmp_path)
    assert site.header_limit == 1024
    assert [(b.path, b.size) for b in site.body_limits] == [("/", 1024)]
    handler = build_chain(site, Echo())
    r = req("/up", "POST", body=b"x" * 2000)
    resp = call(handler, r)
    assert resp.status == 413 and resp.close
    small = req("/up", "POST", body=b"x" * 10)
    assert call(handler, small).status == 200
    assert small.body.limit == 1024


def test_limits_block_longest_path_wins(tmp_path: Path) -> None:
    body = "    limits {\n        header 2KB\n        body /upload 10MB\n        body 1MB\n    }"
    site = load_site(body, tmp_path)
    assert site.header_limit == 2048
    assert [(b.path, b.size) for b in site.body_limits] == [
        ("/upload", 10 * 1024 * 1024),
        ("/", 1024 * 1024),
    ]
    handler = build_chain(site, Echo())
    a, b = req("/upload/x", "POST"), req("/other", "POST")
    call(handler, a)
    call(handler, b)
    assert a.body.limit == 10 * 1024 * 1024
    assert b.body.limit == 1024 * 1024


def test_limits_body_read_past_limit_is_413_with_errors(tmp_path: Path) -> None:
    async def reads(request: Request) -> Response:
        await request.body.read_all()
        return Response.text(200, "read")

    (tmp_path / "413.html").write_text("too big")
    handler = chain("    limits 10B\n    errors {\n        413 413.html\n    }", tmp_path, reads)
    r = req("/", "POST")
    r.body = _ChunkedBody(b"y" * 100)
    resp = call(handler, r)
    assert resp.status == 413 and resp.body == b"too big"


def test_limits_413_is_logged(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = chain(f'    limits 10B\n    log / {path} "{{status}} {{uri}}"', tmp_path)
    r = req("/big", "POST", body=b"z" * 50)
    resp = call(handler, r)
    assert resp.status == 413
    complete(r, resp)
    assert path.read_text() == "413 /big\n"


class _ChunkedBody(EmptyBody):
    @property
    def length(self) -> int | None:
        return None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    limits 0", "must be more than 0"),
        ("    limits 10XB", "invalid size"),
        ("    limits {\n        foo 1\n    }", "unknown limits option"),
        ("    limits {\n        body / / 1\n    }", "wrong argument count"),
        ("    limits", "wrong argument count"),
    ],
)
def test_limits_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0]
    assert errors[0].startswith("Caddyfile:3") or errors[0].startswith("Caddyfile:4")


# --- log ------------------------------------------------------------------------------------


def test_log_custom_format_written_on_complete(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    handler = chain(
        f'    log / {path} "{{method}} {{uri}} {{status}} {{size}} {{>X-Id}}"', tmp_path
    )
    r = req("/hello", headers=[("X-Id", "7")], query="a=1")
    resp = call(handler, r)
    assert path.read_text() == ""  # not before the response is sent
    complete(r, resp, 12)
    assert path.read_text() == "GET /hello?a=1 200 12 7\n"


def test_log_common_format_default(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = chain(f"    log {path}", tmp_path)
    r = req("/x")
    complete(r, call(handler, r), 5)
    line = path.read_text()
    assert re.fullmatch(
        r"192\.0\.2\.10 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /x HTTP/1\.1" 200 5\n',
        line,
    ), line


def test_log_combined_and_empty_values(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = chain(f"    log / {path} {{combined}}", tmp_path)
    r = req("/x", headers=[("User-Agent", "curl/8")])
    complete(r, call(handler, r), 0)
    assert path.read_text().endswith('"GET /x HTTP/1.1" 200 0 "-" "curl/8"\n')


def test_log_path_scope_and_except(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    body = f'    log /app {path} "{{path}}" {{\n        except /app/health\n    }}'
    handler = chain(body, tmp_path)
    for p in ("/app/x", "/other", "/app/health/deep", "/apple"):
        r = req(p)
        complete(r, call(handler, r))
    # /apple matches /app (a plain prefix, as in Caddy)
    assert path.read_text() == "/app/x\n/apple\n"


def test_log_longest_scope_wins_and_several_outputs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    body = f'    log / {a} "all {{path}}"\n    log /api {b} "api {{path}}"\n    log /api {c} "c"'
    handler = chain(body, tmp_path)
    for p in ("/", "/api/v1"):
        r = req(p)
        complete(r, call(handler, r))
    assert a.read_text() == "all /\n"
    assert b.read_text() == "api /api/v1\n"
    assert c.read_text() == "c\n"


def test_log_ipmask(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    body = (
        f'    log / {path} "{{remote}}" {{\n        ipmask 255.255.255.0 ffff:ffff:ffff::\n    }}'
    )
    handler = chain(body, tmp_path)
    for remote in ("198.51.100.77", "2001:db8:1:2:3::9", "::ffff:203.0.113.9"):
        r = req("/")
        r.remote_addr = remote
        complete(r, call(handler, r))
    assert path.read_text().splitlines() == ["198.51.100.0", "2001:db8:1::", "203.0.113.0"]


def test_log_user_from_basicauth(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = chain(f'    log / {path} "{{user}}"\n    basicauth / alice pw', tmp_path)
    r = req("/", headers=[auth("alice", "pw")])
    complete(r, call(handler, r))
    r2 = req("/")
    resp = call(handler, r2)
    complete(r2, resp)
    assert resp.status == 401
    assert path.read_text() == "alice\n-\n"


def test_log_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    handler = chain('    log / stdout "{method} {path}"', tmp_path)
    r = req("/s")
    complete(r, call(handler, r))
    assert capsys.readouterr().out == "GET /s\n"


def test_log_rotation_options_parsed(tmp_path: Path) -> None:
    body = (
        f"    log {tmp_path}/r.log {{\n        rotate_size 5\n        rotate_age 3\n"
        "        rotate_keep 2\n        rotate_compress\n    }"
    )
    site = load_site(body, tmp_path)
    entry = site.directives["log"].entries[0]
    assert (entry.roller.size_mb, entry.roller.age_days, entry.roller.keep) == (5, 3, 2)
    assert entry.roller.compress


def test_log_latency_and_status_are_real(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = chain(
        f'    log / {path} "{{status}} {{latency}}"', tmp_path, Echo(lambda r: Response.error(404))
    )
    r = req("/")
    r.start_time = 0.0
    resp = call(handler, r)
    complete(r, resp)
    status, latency = path.read_text().split()
    assert status == "404"
    assert re.fullmatch(r"[0-9.]+(ns|µs|ms|s)|0s", latency)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    log a b c d", "wrong argument count"),
        ("    log {\n        rotate_size x\n    }", "not a whole number"),
        ("    log {\n        ipmask 255.0.255.0\n    }", "not a contiguous mask"),
        ("    log {\n        ipmask nope\n    }", "invalid IP mask"),
        ("    log {\n        frobnicate 1\n    }", "unknown log option"),
    ],
)
def test_log_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


def test_log_file_that_cannot_be_opened_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    errors = load_errors(f"\n    log {tmp_path}/afile/access.log", tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith("Caddyfile:4 - cannot open log file")


# --- rewrite --------------------------------------------------------------------------------


def rewritten(handler: Handler, path: str, query: str = "", **kw: object) -> str:
    r = req(path, query=query, **kw)  # type: ignore[arg-type]
    resp = call(handler, r)
    assert resp.status == 200
    assert isinstance(resp.body, bytes)
    return resp.body.decode()


def test_rewrite_simple(tmp_path: Path) -> None:
    handler = chain("    rewrite ^/old/(.*) /new/{1}\n    rewrite /a$ /b.html", tmp_path)
    assert rewritten(handler, "/old/x/y") == "/new/x/y"
    assert rewritten(handler, "/a") == "/b.html"
    assert rewritten(handler, "/ab") == "/ab"


def test_rewrite_not(tmp_path: Path) -> None:
    handler = chain("    rewrite not ^/api /index.html", tmp_path)
    assert rewritten(handler, "/api/v1") == "/api/v1"
    assert rewritten(handler, "/page") == "/index.html"


def test_rewrite_to_fallbacks_first_existing_wins(tmp_path: Path) -> None:
    (tmp_path / "exists.html").write_text("x")
    (tmp_path / "folder").mkdir()
    handler = chain("    rewrite {\n        to {path} {path}/ /index.php?{query}\n    }", tmp_path)
    assert rewritten(handler, "/exists.html") == "/exists.html"
    assert rewritten(handler, "/folder") == "/folder/"
    assert rewritten(handler, "/missing", "a=1") == "/index.php?a=1"


def test_rewrite_keeps_original_uri_for_placeholders(tmp_path: Path) -> None:
    echo = Echo()
    handler = chain("    rewrite /x /y?z=1", tmp_path, echo)
    r = req("/x", query="q=2")
    call(handler, r)
    assert (r.path, r.query, r.uri, r.original_uri) == ("/y", "z=1", "/y?z=1", "/x?q=2")


def test_rewrite_regexp_base_and_groups(tmp_path: Path) -> None:
    body = "    rewrite /blog {\n        r ^/(\\d+)/(.*)$\n        to /posts/{2}-{1}.html\n    }"
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/blog/2024/hello") == "/posts/hello-2024.html"
    assert rewritten(handler, "/other/2024/hello") == "/other/2024/hello"
    assert rewritten(handler, "/blog/x/hello") == "/blog/x/hello"


def test_rewrite_ext_filter(tmp_path: Path) -> None:
    body = "    rewrite {\n        ext / .html\n        to /app.php\n    }"
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/page") == "/app.php"
    assert rewritten(handler, "/page.html") == "/app.php"
    assert rewritten(handler, "/style.css") == "/style.css"
    body = "    rewrite {\n        ext !.css !.js\n        to /app.php\n    }"
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/style.css") == "/style.css"
    assert rewritten(handler, "/page") == "/app.php"


def test_rewrite_if_conditions(tmp_path: Path) -> None:
    body = (
        "    rewrite {\n        if {>User-Agent} has Mobile\n        if {path} not /m\n"
        "        if_op and\n        to /m{path}\n    }"
    )
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/a", headers=[("User-Agent", "Mobile Safari")]) == "/m/a"
    assert rewritten(handler, "/a", headers=[("User-Agent", "Desktop")]) == "/a"
    body = (
        "    rewrite {\n        if {?v} is 1\n        if {method} is POST\n"
        "        if_op or\n        to /hit\n    }"
    )
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/a", "v=1") == "/hit?v=1"
    assert rewritten(handler, "/a", "v=2") == "/a?v=2"


def test_rewrite_longest_base_wins(tmp_path: Path) -> None:
    body = (
        "    rewrite / {\n        to /root\n    }\n    rewrite /api {\n        to /api.php\n    }"
    )
    handler = chain(body, tmp_path)
    assert rewritten(handler, "/api/x") == "/api.php"
    assert rewritten(handler, "/x") == "/root"


def test_rewrite_destination_is_always_absolute_and_inside_root(tmp_path: Path) -> None:
    handler = chain("    rewrite ^/x index.php\n    rewrite ^/y ../../etc/passwd", tmp_path)
    assert rewritten(handler, "/x") == "/index.php"
    assert rewritten(handler, "/y") == "/etc/passwd"  # a path under the root, not /etc


def test_rewrite_async_next(tmp_path: Path) -> None:
    handler = chain("    rewrite ^/a /b", tmp_path, async_next(Echo()))
    r = req("/a")
    result = handler(r)
    assert not isinstance(result, Response)
    assert asyncio.run(resolve(result)).body == b"/b"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    rewrite ^/( /x", "invalid regular expression"),
        ("    rewrite {\n        regexp .*\n    }", "needs a `to` line"),
        ("    rewrite {\n        ext html\n        to /x\n    }", "invalid extension"),
        ("    rewrite {\n        if a equals b\n        to /x\n    }", "invalid operator"),
        ("    rewrite {\n        if_op xor\n        to /x\n    }", "if_op takes"),
        ("    rewrite {\n        status 200\n    }", "unknown rewrite option"),
    ],
)
def test_rewrite_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- redir ----------------------------------------------------------------------------------


def test_redir_from_to(tmp_path: Path) -> None:
    handler = chain("    redir /old /new", tmp_path)
    resp = call(handler, req("/old"))
    assert resp.status == 301
    assert resp.headers["Location"] == "/new"
    assert resp.body == b'<a href="/new">Moved Permanently</a>.\n\n'
    assert call(handler, req("/old/x")).status == 200  # exact match only
    head = call(handler, req("/old", "POST"))
    assert head.status == 301 and head.body == b""


def test_redir_catch_all_with_placeholders(tmp_path: Path) -> None:
    handler = chain("    redir https://{host}{uri}", tmp_path)
    resp = call(handler, req("/a b", query="x=1"))
    assert resp.status == 301
    assert resp.headers["Location"] == "https://example.com/a%20b?x=1"


@pytest.mark.parametrize("code", [300, 301, 302, 303, 305, 307, 308])
def test_redir_codes(tmp_path: Path, code: int) -> None:
    handler = chain(f"    redir /a /b {code}", tmp_path)
    resp = call(handler, req("/a"))
    assert resp.status == code and resp.headers["Location"] == "/b"
    handler = chain(f"    redir /b {code}", tmp_path)
    assert call(handler, req("/anything")).status == code


def test_redir_meta(tmp_path: Path) -> None:
    handler = chain('    redir /a "/b?x=<y>" meta', tmp_path)
    resp = call(handler, req("/a"))
    assert resp.status == 200
    assert isinstance(resp.body, bytes)
    assert b"window.location.replace(&quot;" not in resp.body
    assert b"/b?x=&lt;y&gt;" in resp.body
    assert "Location" not in resp.headers


def test_redir_block_and_block_code(tmp_path: Path) -> None:
    body = "    redir 302 {\n        /a /b\n        /c /d 307\n        /e /f meta\n    }"
    handler = chain(body, tmp_path)
    assert call(handler, req("/a")).status == 302
    assert call(handler, req("/c")).status == 307
    assert call(handler, req("/e")).status == 200
    assert call(handler, req("/g")).status == 200


def test_redir_if(tmp_path: Path) -> None:
    body = (
        "    redir {\n        if {>X-Forwarded-Proto} is http\n        / https://{host}{uri}\n    }"
    )
    handler = chain(body, tmp_path)
    resp = call(handler, req("/p", headers=[("X-Forwarded-Proto", "http")]))
    assert resp.status == 301 and resp.headers["Location"] == "https://example.com/p"
    assert call(handler, req("/p", headers=[("X-Forwarded-Proto", "https")])).status == 200
    body = "    redir /x /y {\n        if {?go} is 1\n    }"
    handler = chain(body, tmp_path)
    assert call(handler, req("/x", query="go=1")).status == 301
    assert call(handler, req("/x")).status == 200


def test_redir_relative_target(tmp_path: Path) -> None:
    handler = chain("    redir /docs/old new", tmp_path)
    assert call(handler, req("/docs/old")).headers["Location"] == "/docs/new"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    redir /a /b 309", "invalid redirect code"),
        ("    redir /a /a 301", "cannot be the same"),
        ("    redir /a /b\n    redir /a /c", "duplicate 'from'"),
        ("    redir", "wrong argument count"),
        ("    redir a b c d", "wrong argument count"),
    ],
)
def test_redir_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- header ---------------------------------------------------------------------------------


def test_header_set_add_remove(tmp_path: Path) -> None:
    def inner(r: Request) -> Response:
        resp = Response.text(200, "x")
        resp.headers.set("X-Powered-By", "php")
        resp.headers.set("Cache-Control", "no-cache")
        resp.headers.set("Link", "</a>")
        return resp

    body = (
        "    header / {\n        Cache-Control max-age=60\n        +Link </b>\n"
        "        -X-Powered-By\n        X-Host {host}\n        X-Type {<Content-Type}\n    }"
    )
    resp = call(chain(body, tmp_path, Echo(inner)), req("/"))
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers.get_all("Link") == ["</a>", "</b>"]
    assert "X-Powered-By" not in resp.headers
    assert resp.headers["X-Host"] == "example.com"
    assert resp.headers["X-Type"] == "text/plain; charset=utf-8"


def test_header_single_line_and_paths(tmp_path: Path) -> None:
    body = '    header /api Access-Control-Allow-Origin "*"\n    header / X-Frame-Options DENY'
    handler = chain(body, tmp_path)
    api = call(handler, req("/api/x"))
    assert api.headers["Access-Control-Allow-Origin"] == "*"
    assert api.headers["X-Frame-Options"] == "DENY"
    other = call(handler, req("/x"))
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["X-Frame-Options"] == "DENY"


def test_header_minus_server_leaves_an_empty_server_field(tmp_path: Path) -> None:
    # the server sends no Server field when its value is empty (it adds its own otherwise)
    resp = call(chain("    header / -Server", tmp_path), req("/"))
    assert resp.headers.get_all("Server") == [""]


def test_header_async_next_and_errors(tmp_path: Path) -> None:
    handler = chain("    header / X-A 1", tmp_path, async_next(Echo(lambda r: Response.error(404))))
    result = handler(req("/"))
    assert not isinstance(result, Response)
    resp = asyncio.run(resolve(result))
    assert resp.status == 404 and resp.headers["X-A"] == "1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    header", "wrong argument count"),
        ("    header /", "wrong argument count"),
        ("    header / X-A b c", "takes one value"),  # no value at all: empty (v1)
        ("    header / -X-A b", "takes no value"),
        ('    header / "Bad Name" v', "invalid header field name"),
    ],
)
def test_header_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- status ---------------------------------------------------------------------------------


def test_status(tmp_path: Path) -> None:
    body = "    status 403 /secret\n    status 404 {\n        /hidden\n        /private\n    }"
    handler = chain(body + "\n    status 204 /secret/ok", tmp_path)
    forbidden = call(handler, req("/secret/x"))
    assert forbidden.status == 403 and forbidden.default_error
    assert forbidden.body == b"403 Forbidden\n"
    assert call(handler, req("/hidden")).status == 404
    assert call(handler, req("/private/a")).status == 404
    ok = call(handler, req("/secret/ok"))  # longest base wins
    assert ok.status == 204 and ok.body == b""
    assert call(handler, req("/public")).status == 200


def test_status_page_from_errors(tmp_path: Path) -> None:
    (tmp_path / "403.html").write_text("<h1>nope</h1>")
    handler = chain("    status 403 /s\n    errors {\n        403 403.html\n    }", tmp_path)
    resp = call(handler, req("/s"))
    assert resp.status == 403 and resp.body == b"<h1>nope</h1>"
    assert resp.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    status x /a", "expecting a numeric status code"),
        ("    status 404", "wrong argument count"),
        ("    status 404 /a\n    status 403 /a", "duplicate path"),
        ("    status 42 /a", "out of range"),
    ],
)
def test_status_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- errors ---------------------------------------------------------------------------------


def test_errors_pages(tmp_path: Path) -> None:
    (tmp_path / "404.html").write_text("not here")
    (tmp_path / "err.txt").write_text("generic")
    body = "    errors {\n        404 404.html\n        * err.txt\n    }"

    def inner(r: Request) -> Response:
        code = int(r.path.strip("/"))
        if code == 401:
            return Response.error(401, Headers([("WWW-Authenticate", 'Basic realm="R"')]))
        if code == 502:
            return Response.text(502, "upstream's own page")
        return Response.error(code)

    handler = chain(body, tmp_path, Echo(inner))
    nf = call(handler, req("/404"))
    assert (nf.status, nf.body) == (404, b"not here")
    assert nf.headers["Content-Type"].startswith("text/html")
    other = call(handler, req("/500"))
    assert (other.status, other.body) == (500, b"generic")
    assert other.headers["Content-Type"].startswith("text/plain")
    unauthorized = call(handler, req("/401"))
    assert unauthorized.body == b"generic"
    assert unauthorized.headers["WWW-Authenticate"] == 'Basic realm="R"'
    own = call(handler, req("/502"))  # not a default error page: left alone
    assert own.body == b"upstream's own page"


def test_errors_missing_page_keeps_default(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    handler = chain(
        f"    errors {log} {{\n        404 nope.html\n    }}",
        tmp_path,
        Echo(lambda r: Response.error(404)),
    )
    resp = call(handler, req("/x"))
    assert resp.body == b"404 Not Found\n"
    assert "cannot read error page" in log.read_text()


def test_errors_handler_exception_logged(tmp_path: Path) -> None:
    log = tmp_path / "error.log"

    def boom(r: Request) -> Response:
        raise RuntimeError("kaput")

    handler = chain(f"    errors {log}", tmp_path, boom)
    resp = call(handler, req("/broken"))
    assert resp.status == 500 and resp.body == b"500 Internal Server Error\n"
    line = log.read_text()
    assert re.fullmatch(
        r"\d\d/\w{3}/\d{4}:[\d:]{8} [+-]\d{4} \[ERROR 500 /broken\] RuntimeError: kaput\n", line
    ), line


def test_errors_async_exception_and_visible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def boom(r: Request) -> Response:
        await asyncio.sleep(0)
        raise ValueError("later")

    handler = chain("    errors visible", tmp_path, boom)
    result = handler(req("/a"))
    assert not isinstance(result, Response)
    resp = asyncio.run(resolve(result))
    assert resp.status == 500
    assert isinstance(resp.body, bytes) and b"ValueError: later" in resp.body
    assert "[ERROR 500 /a] ValueError: later" in capsys.readouterr().err


def test_errors_log_block_and_rotation(tmp_path: Path) -> None:
    body = (
        f"    errors {{\n        log {tmp_path}/e.log\n        rotate_keep 3\n"
        "        500 500.html\n    }"
    )
    site = load_site(body, tmp_path)
    config = site.directives["errors"]
    assert config.log == f"{tmp_path}/e.log" and config.roller.keep == 3
    assert config.pages == {"500": "500.html"}


def test_errors_page_cannot_climb_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    handler = chain(
        "    errors {\n        404 ../secret.txt\n    }", root, Echo(lambda r: Response.error(404))
    )
    assert call(handler, req("/")).body == b"404 Not Found\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    errors {\n        abc page.html\n    }", "expecting a numeric status code"),
        ("    errors {\n        200 page.html\n    }", "codes 400-599"),
        ("    errors {\n        404\n    }", "wrong argument count"),
        ("    errors a b", "wrong argument count"),
    ],
)
def test_errors_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- basicauth ------------------------------------------------------------------------------


def test_basicauth_plain(tmp_path: Path) -> None:
    echo = Echo()
    handler = chain("    basicauth /admin alice s3cret", tmp_path, echo)
    denied = call(handler, req("/admin/x"))
    assert denied.status == 401 and denied.default_error
    assert denied.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
    assert call(handler, req("/admin", headers=[auth("alice", "wrong")])).status == 401
    assert call(handler, req("/admin", headers=[auth("bob", "s3cret")])).status == 401
    r = req("/admin", headers=[auth("alice", "s3cret")])
    assert call(handler, r).status == 200
    assert r.vars["user"] == "alice"
    assert call(handler, req("/public")).status == 200
    assert call(handler, req("/admin", "OPTIONS")).status == 200


def test_basicauth_whole_site_block_realm_and_paths(tmp_path: Path) -> None:
    handler = chain("    basicauth bob pw", tmp_path)
    assert call(handler, req("/anything")).status == 401
    body = (
        '    basicauth carol pw {\n        realm "Staff only"\n        /a\n        path /b\n    }'
    )
    handler = chain(body, tmp_path)
    denied = call(handler, req("/b/1"))
    assert denied.headers["WWW-Authenticate"] == 'Basic realm="Staff only"'
    assert call(handler, req("/a", headers=[auth("carol", "pw")])).status == 200
    assert call(handler, req("/c")).status == 200


def test_basicauth_malformed_headers(tmp_path: Path) -> None:
    handler = chain("    basicauth u p", tmp_path)
    for value in (
        "Basic",
        "Basic !!!",
        "Bearer abc",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ):
        assert call(handler, req("/", headers=[("Authorization", value)])).status == 401


def test_basicauth_htpasswd_apr1_sha_and_hidden(tmp_path: Path) -> None:
    (tmp_path / ".htpasswd").write_text(f"alice:{apr1('apple')}\nbob:{sha1_entry('banana')}\n")
    body = "    basicauth / alice htpasswd=.htpasswd\n    basicauth / bob htpasswd=.htpasswd"
    site = load_site(body, tmp_path)
    assert str(tmp_path / ".htpasswd") in site.hidden
    handler = build_chain(site, Echo())
    assert call(handler, req("/", headers=[auth("alice", "apple")])).status == 200
    assert call(handler, req("/", headers=[auth("bob", "banana")])).status == 200
    assert call(handler, req("/", headers=[auth("alice", "banana")])).status == 401


def test_basicauth_htpasswd_file_is_never_served(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text(f"carol:{apr1('pw')}\n")
    (tmp_path / "other.txt").write_text("public\n")
    site = load_site("    basicauth /private carol htpasswd=users.txt", tmp_path)
    handler = build_chain(site)  # with the real file server
    assert call(handler, req("/users.txt")).status == 404
    assert call(handler, req("/other.txt")).status == 200


def test_basicauth_bcrypt_off_the_loop_then_cached(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"cherry", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "users").write_text(f"carol:{hashed}\n")
    handler = chain("    basicauth / carol htpasswd=users", tmp_path)
    r = req("/", headers=[auth("carol", "cherry")])
    first = handler(r)
    assert not isinstance(first, Response)  # bcrypt runs in a thread
    assert asyncio.run(resolve(first)).status == 200
    again = handler(req("/", headers=[auth("carol", "cherry")]))
    assert isinstance(again, Response) and again.status == 200  # remembered
    wrong = handler(req("/", headers=[auth("carol", "nope")]))
    assert asyncio.run(resolve(wrong)).status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    basicauth onlyuser", "wrong argument count"),
        ("    basicauth u htpasswd=missing-file", "cannot read htpasswd file"),
        ("    basicauth u p {\n        realm a\n        realm b\n    }", "only be given once"),
        ("    basicauth u p {\n        color blue\n    }", 'expecting "path" or "realm"'),
    ],
)
def test_basicauth_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


def test_basicauth_unknown_htpasswd_user(tmp_path: Path) -> None:
    (tmp_path / "h").write_text("someone:x\n")
    errors = load_errors("    basicauth u htpasswd=h", tmp_path)
    assert errors and "user 'u' not found" in errors[0]


# --- gzip -----------------------------------------------------------------------------------

GZ = [("Accept-Encoding", "gzip, deflate")]
HTML = b"<html>" + b"hello gzip " * 500 + b"</html>"


def html_response(r: Request) -> Response:
    resp = Response(200, Headers([("Content-Type", "text/html"), ("ETag", '"abc"')]), HTML)
    resp.headers.set("Content-Length", str(len(HTML)))
    resp.headers.set("Accept-Ranges", "bytes")
    return resp


def test_accepts_gzip() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("br")
    assert not accepts_gzip(None)
    assert not accepts_gzip("*;q=0")


def test_gzip_bytes_body(tmp_path: Path) -> None:
    handler = chain("    gzip", tmp_path, Echo(html_response))
    resp = call(handler, req("/page.html", headers=GZ))
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["ETag"] == 'W/"abc"'
    assert "Content-Length" not in resp.headers and "Accept-Ranges" not in resp.headers
    assert isinstance(resp.body, bytes)
    assert gzip_mod.decompress(resp.body) == HTML
    assert len(resp.body) < len(HTML)


def test_gzip_not_without_accept_encoding_or_for_head(tmp_path: Path) -> None:
    handler = chain("    gzip", tmp_path, Echo(html_response))
    for r in (
        req("/page.html"),
        req("/page.html", headers=[("Accept-Encoding", "gzip;q=0")]),
        req("/page.html", "HEAD", headers=GZ),
    ):
        resp = call(handler, r)
        assert "Content-Encoding" not in resp.headers and resp.body == HTML


@pytest.mark.parametrize(
    "change",
    [
        lambda r: setattr(r, "status", 206),
        lambda r: setattr(r, "status", 304),
        lambda r: setattr(r, "status", 204),
        lambda r: r.headers.set("Content-Encoding", "br"),
        lambda r: r.headers.set("Content-Type", "image/png"),
        lambda r: r.headers.set("Content-Type", "application/zip"),
        lambda r: r.headers.set("Cache-Control", "public, no-transform"),
        lambda r: setattr(r, "body", b""),
    ],
)
def test_gzip_skips(tmp_path: Path, change: Callable[[Response], object]) -> None:
    def inner(r: Request) -> Response:
        resp = html_response(r)
        change(resp)
        return resp

    handler = chain("    gzip {\n        ext *\n    }", tmp_path, Echo(inner))
    resp = call(handler, req("/x.html", headers=GZ))
    assert resp.headers.get("Content-Encoding") != "gzip"


def test_gzip_compresses_svg(tmp_path: Path) -> None:
    def inner(r: Request) -> Response:
        return Response(200, Headers([("Content-Type", "image/svg+xml")]), HTML)

    resp = call(chain("    gzip", tmp_path, Echo(inner)), req("/a.svg", headers=GZ))
    assert resp.headers["Content-Encoding"] == "gzip"


def test_gzip_extension_filter(tmp_path: Path) -> None:
    handler = chain("    gzip", tmp_path, Echo(html_response))
    assert "Content-Encoding" not in call(handler, req("/a.png", headers=GZ)).headers
    assert call(handler, req("/", headers=GZ)).headers["Content-Encoding"] == "gzip"  # "" ext
    assert call(handler, req("/a.css", headers=GZ)).headers["Content-Encoding"] == "gzip"
    handler = chain("    gzip {\n        ext .png\n    }", tmp_path, Echo(html_response))
    assert call(handler, req("/a.png", headers=GZ)).headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in call(handler, req("/a.html", headers=GZ)).headers


def test_gzip_not_paths_and_min_length_and_level(tmp_path: Path) -> None:
    body = (
        "    gzip {\n        not /raw /api/bin\n        min_length 100000\n        level 1\n    }"
    )
    site = load_site(body, tmp_path)
    rule = site.directives["gzip"].rules[0]
    assert (rule.not_paths, rule.min_length, rule.level) == (["/raw", "/api/bin"], 100000, 1)
    handler = build_chain(site, Echo(html_response))
    assert "Content-Encoding" not in call(handler, req("/raw/a.html", headers=GZ)).headers
    assert "Content-Encoding" not in call(handler, req("/a.html", headers=GZ)).headers  # short
    handler = chain("    gzip {\n        min_length 100\n    }", tmp_path, Echo(html_response))
    assert call(handler, req("/a.html", headers=GZ)).headers["Content-Encoding"] == "gzip"


def _file_response(
    path: Path, offset: int, length: int, released: list[int]
) -> Callable[[Request], Response]:
    def inner(r: Request) -> Response:
        fd = os.open(path, os.O_RDONLY)

        def release() -> None:
            released.append(fd)
            os.close(fd)

        size = path.stat().st_size
        body = FileBody(fd=fd, offset=offset, length=length, size=size, release=release)
        headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(length))])
        return Response(200, headers, body)

    return inner


def test_gzip_small_file_body_respects_offset_and_length(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"text " * 1000
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    released: list[int] = []
    handler = chain("    gzip", tmp_path, Echo(_file_response(path, 100, 5000, released)))
    resp = call(handler, req("/f.txt", headers=GZ))
    assert isinstance(resp.body, bytes)
    assert gzip_mod.decompress(resp.body) == data[100:5100]
    assert len(released) == 1
    again = call(handler, req("/f.txt", headers=GZ))  # from the cache, still released
    assert isinstance(again.body, bytes) and gzip_mod.decompress(again.body) == data[100:5100]
    assert len(released) == 2


def test_gzip_big_file_streams(tmp_path: Path) -> None:
    data = os.urandom(300_000).hex().encode()  # 600 kB of compressible text
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    released: list[int] = []
    handler = chain("    gzip", tmp_path, Echo(_file_response(path, 0, len(data), released)))
    resp = call(handler, req("/big.txt", headers=GZ))
    assert isinstance(resp.body, GzipStream)

    async def drain(stream: GzipStream) -> bytes:
        return b"".join([piece async for piece in stream])

    out = asyncio.run(drain(resp.body))
    assert gzip_mod.decompress(out) == data
    assert len(released) == 1


def test_gzip_stream_released_when_dropped(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 400_000)
    released: list[int] = []
    handler = chain("    gzip", tmp_path, Echo(_file_response(path, 0, 400_000, released)))
    resp = call(handler, req("/big.txt", headers=GZ))
    assert isinstance(resp.body, GzipStream)
    asyncio.run(resp.body.aclose())
    assert len(released) == 1
    resp = call(handler, req("/big.txt", headers=GZ))
    del resp
    import gc

    gc.collect()
    assert len(released) == 2


def test_gzip_async_iterator_body_and_async_next(tmp_path: Path) -> None:
    async def inner(r: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"chunk {i} ".encode() * 100

        return Response(200, Headers([("Content-Type", "text/plain")]), chunks())

    handler = chain("    gzip", tmp_path, inner)
    result = handler(req("/s", headers=GZ))
    assert not isinstance(result, Response)

    async def run() -> bytes:
        resp = await resolve(result)
        assert resp.headers["Content-Encoding"] == "gzip"
        assert not isinstance(resp.body, bytes | FileBody)
        return b"".join([p async for p in resp.body])

    out = asyncio.run(run())
    assert gzip_mod.decompress(out) == b"".join(f"chunk {i} ".encode() * 100 for i in range(5))


def test_gzip_stream_pieces_are_flushed_at_once(tmp_path: Path) -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        yield b"data: two\n\n"

    async def run() -> list[bytes]:
        stream = GzipStream(events(), 6)
        return [piece async for piece in stream]

    pieces = asyncio.run(run())
    d = zlib.decompressobj(31)
    assert d.decompress(pieces[0]) == b"data: one\n\n"  # readable before the stream ends
    assert d.decompress(b"".join(pieces[1:])) == b"data: two\n\n"


def test_gzip_keeps_existing_vary(tmp_path: Path) -> None:
    def inner(r: Request) -> Response:
        resp = html_response(r)
        resp.headers.set("Vary", "Origin")
        return resp

    resp = call(chain("    gzip", tmp_path, Echo(inner)), req("/", headers=GZ))
    assert resp.headers["Vary"] == "Origin, Accept-Encoding"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    gzip on", "wrong argument count"),
        ("    gzip {\n        level 11\n    }", "level must be 1-9"),
        ("    gzip {\n        ext html\n    }", "must start with a dot"),
        ("    gzip {\n        not /\n    }", 'cannot exclude "/"'),
        ("    gzip {\n        not api\n    }", "must start with /"),
        ("    gzip {\n        min_length 0\n    }", "greater than 0"),
        ("    gzip {\n        brotli\n    }", "unknown gzip option"),
    ],
)
def test_gzip_errors(tmp_path: Path, body: str, message: str) -> None:
    errors = load_errors(body, tmp_path)
    assert errors and message in errors[0], errors


# --- together -------------------------------------------------------------------------------


def test_fixed_order_whatever_the_file_order(tmp_path: Path) -> None:
    """basicauth runs before redir and status; rewrite before them; header wraps all."""
    body = (
        "    status 404 /gone\n    redir /r /elsewhere\n    basicauth /r u p\n"
        "    header / X-Seen yes\n    rewrite ^/old$ /gone"
    )
    handler = chain(body, tmp_path)
    gone = call(handler, req("/old"))
    assert gone.status == 404 and gone.headers["X-Seen"] == "yes"
    assert call(handler, req("/r")).status == 401
    assert call(handler, req("/r", headers=[auth("u", "p")])).status == 301


def test_body_too_large_exception_type() -> None:
    body = EmptyBody(b"x" * 10)
    body.limit = 5
    with pytest.raises(BodyTooLarge):
        asyncio.run(body.read_all())


def test_errors_name_the_line_of_the_block_line(tmp_path: Path) -> None:
    body = (
        "    redir {\n        /a /b\n        /c /d 999\n    }\n"
        "    rewrite {\n        to\n    }\n    log {\n        rotate_keep -1\n    }"
    )
    errors = load_errors(body, tmp_path)
    assert [e.split(" - ")[0] for e in errors] == ["Caddyfile:5", "Caddyfile:8", "Caddyfile:11"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), max_size=8),
    st.sampled_from(["bytes", "file", "stream"]),
    st.integers(min_value=1, max_value=9),
)
def test_gzip_stream_roundtrip(chunks: list[bytes], kind: str, level: int) -> None:
    data = b"".join(chunks)
    source: bytes | FileBody | AsyncIterator[bytes]
    fd = -1
    if kind == "bytes":
        source = data
    elif kind == "file":
        rfd, wfd = os.pipe()  # a FileBody carrying its data (fd unused)
        os.close(wfd)
        fd = rfd
        source = FileBody(fd=rfd, offset=0, length=len(data), size=len(data), data=data)
    else:

        async def gen() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        source = gen()

    async def run() -> bytes:
        return b"".join([p async for p in GzipStream(source, level)])

    try:
        assert gzip_mod.decompress(asyncio.run(run())) == data
    finally:
        if fd >= 0:
            os.close(fd)
