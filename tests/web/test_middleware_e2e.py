"""The middleware directives over a real socket: HttpServer on 127.0.0.1 (its own uvloop in a
thread), curl as the client; and once through `meshkit web -conf` as a process.

One test (at least) per directive and per status code the directives answer with:
200 204 206 301 302 307 308 401 403 404 413 431 500.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from meshkit.web import logfile
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.fileserver import build_fileserver
from meshkit.web.htpasswd import apr1
from meshkit.web.message import HandlerResult, Request
from support.e2e_util import Reply, Running, curl
from support.peers import Proc, free_port, wait_tcp

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

INDEX = b"<html><body>" + b"hello middleware " * 400 + b"</body></html>\n"
BIG = os.urandom(350_000).hex().encode()  # 700 kB of compressible text: streamed when gzipped


def wait_for_text(path: Path, pattern: str, timeout: float = 10.0) -> str:
    """Poll a log file until a line matches (log lines are written after the response)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} never appeared in {path}: {text!r}")


@dataclass
class Site:
    port: int
    root: Path
    logs: Path
    tmp: Path

    def get(self, path: str, *args: str) -> Reply:
        return curl(self.port, path, *args, tmp=self.tmp)


FORMAT = "{remote} {user} {method} {uri} {status} {size} {>X-Id}"


def caddyfile(root: Path, logs: Path) -> str:
    return f"""
127.0.0.1:2015 {{
    root {root}
    limits {{
        header 4KB
        body /upload 1KB
    }}
    log / {logs}/access.log "{FORMAT}" {{
        except /health
    }}
    rewrite ^/alias$ /page.html
    rewrite /app {{
        to {{path}} /page.html
    }}
    gzip
    header / X-Served-By meshkit-{{method}}
    header /api {{
        -X-Served-By
        +X-Extra a
    }}
    errors {logs}/error.log {{
        404 404.html
        500 500.html
    }}
    basicauth /private alice apple
    basicauth /vault carol htpasswd=.htpasswd
    redir /old /index.html
    redir /found /index.html 302
    redir /temp /index.html 307
    redir /perm /index.html 308
    redir /meta /index.html meta
    redir {{
        /r300 /page.html 300
        /r303 /page.html 303
        /r305 /page.html 305
        /r304 /page.html 304
    }}
    status 403 /forbidden
    status 204 /empty
    status 404 /secret
}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("mw")
    root, logs, tmp = base / "root", base / "logs", base / "tmp"
    for d in (root, logs, tmp):
        d.mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "page.html").write_bytes(INDEX)
    (root / "big.txt").write_bytes(BIG)
    (root / "404.html").write_text("<h1>custom not found</h1>\n")
    (root / "500.html").write_text("<h1>custom oops</h1>\n")
    (root / "private").mkdir()
    (root / "private" / "index.html").write_text("private page\n")
    (root / "vault").mkdir()
    (root / "vault" / "index.html").write_text("vault page\n")
    hashed = bcrypt.hashpw(b"cherry", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    (root / ".htpasswd").write_text(f"carol:{hashed}\nalice:{apr1('apple')}\n")
    config = load_text(caddyfile(root, logs))
    config.raise_errors()
    s = config.sites[0]
    fs = build_fileserver(s)

    def last(request: Request) -> HandlerResult:
        if request.path == "/boom":
            raise RuntimeError("kaboom")
        if request.path.startswith("/upload"):
            return _read_body(request)
        return fs(request)

    running = Running(build_chain(s, last), header_limit=s.header_limit)
    try:
        yield Site(running.port, root, logs, tmp)
    finally:
        running.close()
        logfile.close_all()


async def _read_body(request: Request) -> object:
    from meshkit.web.message import Response

    data = await request.body.read_all()
    return Response.text(200, f"got {len(data)}")


# --- gzip -----------------------------------------------------------------------------------


def test_gzip_200(site: Site) -> None:
    r = site.get("/", "-H", "Accept-Encoding: gzip")
    assert r.status == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["etag"].startswith('W/"')
    assert gzip.decompress(r.body) == INDEX
    plain = site.get("/")
    assert "content-encoding" not in plain.headers and plain.body == INDEX


def test_gzip_big_file_streams(site: Site) -> None:
    r = site.get("/big.txt", "-H", "Accept-Encoding: gzip")
    assert r.status == 200 and r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.body) == BIG
    assert len(r.body) < len(BIG)


def test_gzip_not_for_206_or_head(site: Site) -> None:
    r = site.get("/page.html", "-H", "Accept-Encoding: gzip", "-H", "Range: bytes=0-9")
    assert r.status == 206 and "content-encoding" not in r.headers
    assert r.body == INDEX[:10]
    head = site.get("/page.html", "-I", "-H", "Accept-Encoding: gzip")
    assert head.status == 200 and "content-encoding" not in head.headers


# --- log ------------------------------------------------------------------------------------


def test_log_line_has_real_status_and_size(site: Site) -> None:
    r = site.get("/page.html?x=1", "-H", "X-Id: e2e-log-1")
    assert r.status == 200
    text = wait_for_text(site.logs / "access.log", r"e2e-log-1$")
    line = next(ln for ln in text.splitlines() if ln.endswith("e2e-log-1"))
    assert line == f"127.0.0.1 - GET /page.html?x=1 200 {len(INDEX)} e2e-log-1"


def test_log_except_and_user(site: Site) -> None:
    site.get("/health", "-H", "X-Id: e2e-health")
    r = site.get("/private/", "-u", "alice:apple", "-H", "X-Id: e2e-user")
    assert r.status == 200
    text = wait_for_text(site.logs / "access.log", r"e2e-user$")
    assert "127.0.0.1 alice GET /private/ 200" in text
    assert "e2e-health" not in text


# --- header ---------------------------------------------------------------------------------


def test_header(site: Site) -> None:
    r = site.get("/page.html")
    assert r.headers["x-served-by"] == "meshkit-GET"
    api = site.get("/api/x")
    assert api.status == 404
    assert "x-served-by" not in api.headers and api.headers["x-extra"] == "a"


# --- rewrite --------------------------------------------------------------------------------


def test_rewrite(site: Site) -> None:
    assert site.get("/alias").body == INDEX
    assert site.get("/app/some/route").body == INDEX  # SPA fallback
    log = wait_for_text(site.logs / "access.log", r"GET /alias ")
    assert "GET /alias 200" in log  # {uri} is the original one


# --- redir ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"), [("/old", 301), ("/found", 302), ("/temp", 307), ("/perm", 308)]
)
def test_redir(site: Site, path: str, code: int) -> None:
    r = site.get(path)
    assert r.status == code
    assert r.headers["location"] == "/index.html"
    followed = site.get(path, "-L")
    assert followed.status == 200 and followed.body == INDEX


@pytest.mark.parametrize("code", [300, 303, 304, 305])
def test_redir_other_codes(site: Site, code: int) -> None:
    r = site.get(f"/r{code}")
    assert r.status == code
    assert r.headers["location"] == "/page.html"
    if code == 304:
        assert r.body == b""


def test_redir_meta(site: Site) -> None:
    r = site.get("/meta")
    assert r.status == 200 and b"URL='/index.html'" in r.body


# --- status ---------------------------------------------------------------------------------


def test_status_403_204_404(site: Site) -> None:
    assert site.get("/forbidden").status == 403
    empty = site.get("/empty")
    assert empty.status == 204 and empty.body == b""
    hidden = site.get("/secret/plans.txt")
    assert hidden.status == 404 and hidden.body == b"<h1>custom not found</h1>\n"


# --- errors ---------------------------------------------------------------------------------


def test_errors_404_page(site: Site) -> None:
    r = site.get("/no-such-file")
    assert r.status == 404
    assert r.body == b"<h1>custom not found</h1>\n"
    assert r.headers["content-type"].startswith("text/html")


def test_errors_500_logged(site: Site) -> None:
    r = site.get("/boom")
    assert r.status == 500 and r.body == b"<h1>custom oops</h1>\n"
    text = wait_for_text(site.logs / "error.log", r"\[ERROR 500 /boom\] RuntimeError: kaboom")
    assert "kaboom" in text


# --- basicauth ------------------------------------------------------------------------------


def test_basicauth_401_and_200(site: Site) -> None:
    r = site.get("/private/")
    assert r.status == 401
    assert r.headers["www-authenticate"] == 'Basic realm="Restricted"'
    assert site.get("/private/", "-u", "alice:wrong").status == 401
    ok = site.get("/private/", "-u", "alice:apple")
    assert ok.status == 200 and ok.body == b"private page\n"


def test_basicauth_htpasswd_bcrypt(site: Site) -> None:
    assert site.get("/vault/").status == 401
    assert site.get("/vault/", "-u", "carol:nope").status == 401
    for _ in range(2):  # the second time from the remembered check
        ok = site.get("/vault/", "-u", "carol:cherry")
        assert ok.status == 200 and ok.body == b"vault page\n"
    assert site.get("/.htpasswd").status == 404  # never served


# --- limits ---------------------------------------------------------------------------------


def test_limits_413(site: Site) -> None:
    r = site.get("/upload", "--data-binary", "x" * 2000, "-H", "X-Id: e2e-413")
    assert r.status == 413
    wait_for_text(site.logs / "access.log", r"POST /upload 413 \d+ e2e-413$")
    ok = site.get("/upload", "--data-binary", "x" * 100)
    assert ok.status == 200 and ok.body == b"got 100"


def test_limits_413_chunked(site: Site) -> None:
    r = site.get("/upload", "-H", "Transfer-Encoding: chunked", "--data-binary", "y" * 5000)
    assert r.status == 413


def test_limits_431_header(site: Site) -> None:
    r = site.get("/page.html", "-H", "X-Big: " + "z" * 6000)
    assert r.status == 431


# --- the command ----------------------------------------------------------------------------


def test_meshkit_web_process(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.html").write_bytes(INDEX)
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"127.0.0.1:{port} {{\n    root {root}\n    gzip\n"
        f"    log / {tmp_path}/access.log {{common}}\n"
        "    header / X-Proc yes\n    redir /old /index.html\n    status 403 /forbidden\n}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        r = curl(port, "/", "-H", "Accept-Encoding: gzip", tmp=tmp_path)
        assert r.status == 200 and gzip.decompress(r.body) == INDEX
        assert r.headers["x-proc"] == "yes"
        assert curl(port, "/old", tmp=tmp_path).status == 301
        assert curl(port, "/forbidden", tmp=tmp_path).status == 403
        text = wait_for_text(tmp_path / "access.log", r'"GET /forbidden HTTP/1.1" 403 ')
        assert re.search(r'^127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 200 \d+$', text, re.M)
    finally:
        proc.stop()
