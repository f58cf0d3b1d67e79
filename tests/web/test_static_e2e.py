"""The file server over a real socket: HttpServer on 127.0.0.1, curl as the client (with
--path-as-is, so traversal tricks reach the server unchanged)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_file, load_text
from meshkit.web.directives import build_chain
from support import e2e_util
from support.e2e_util import Reply, Running

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

SECRET = b"TOP SECRET outside the root\n"


def curl(port: int, path: str, *args: str, tmp: Path) -> Reply:
    return e2e_util.curl(port, path, *args, tmp=tmp, path_as_is=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "hello.txt").write_text("hello, world\n")
    (root / "sub").mkdir()
    (root / "sub" / "file.txt").write_text("inside\n")
    (root / "private").mkdir()
    (root / "private" / "data.txt").write_text("internal only\n")
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_text("a")
    (root / "files" / "b.txt").write_text("bb")
    (root / "app.js").write_text("console.log(1)\n")
    (root / "app.js.br").write_bytes(b"BR-DATA")
    (root / "app.js.gz").write_bytes(b"GZ-DATA")
    (root / "about.html").write_text("about\n")
    big = bytes((i * 7 + i // 251) % 256 for i in range(3 * 1024 * 1024 + 17))
    (root / "big.bin").write_bytes(big)
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path / "outside", root / "outdir")
    os.symlink("sub", root / "alias")
    (root / "Caddyfile").write_text(
        "127.0.0.1:2015\nroot .\nbrowse /files\ninternal /private\next .html\n"
    )
    return tmp_path


@pytest.fixture(params=["compiled", "python"])
def srv(
    tree: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Running]:
    """The site of tree/site/Caddyfile, served with the compiled send path or its twin."""
    root = tree / "site"
    monkeypatch.chdir(root)
    monkeypatch.setenv("MESHKIT_NO_EXTENSIONS", "1" if request.param == "python" else "0")
    config = load_file("Caddyfile")
    assert not config.errors, config.errors
    running = Running(build_chain(config.sites[0]))
    if request.param == "python":
        assert not running.server.compiled
    try:
        yield running
    finally:
        running.close()


def test_files_and_index(srv: Running, tmp_path: Path) -> None:
    r = curl(srv.port, "/hello.txt", tmp=tmp_path)
    assert r.status == 200 and r.body == b"hello, world\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == "13"
    assert r.headers["etag"].startswith('"') and r.headers["accept-ranges"] == "bytes"
    assert r.headers["server"] == "meshkit"
    r = curl(srv.port, "/", tmp=tmp_path)
    assert r.status == 200 and r.body == b"<h1>home</h1>\n"
    assert curl(srv.port, "/alias/file.txt", tmp=tmp_path).body == b"inside\n"
    assert curl(srv.port, "/about", tmp=tmp_path).body == b"about\n"  # ext


def test_big_file_through_sendfile(srv: Running, tree: Path, tmp_path: Path) -> None:
    want = (tree / "site" / "big.bin").read_bytes()
    r = curl(srv.port, "/big.bin", tmp=tmp_path)
    assert r.status == 200
    assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(want).hexdigest()
    r = curl(srv.port, "/big.bin", "-r", "1000000-1999999", tmp=tmp_path)
    assert r.status == 206 and r.body == want[1000000:2000000]
    assert r.headers["content-range"] == f"bytes 1000000-1999999/{len(want)}"


def test_redirects(srv: Running, tmp_path: Path) -> None:
    r = curl(srv.port, "/sub?x=1", tmp=tmp_path)
    assert r.status == 301 and r.headers["location"] == "/sub/?x=1"
    r = curl(srv.port, "/hello.txt/", tmp=tmp_path)
    assert r.status == 301 and r.headers["location"] == "/hello.txt"
    r = curl(srv.port, "/index.html", tmp=tmp_path)
    assert r.status == 301 and r.headers["location"] == "/"


def test_conditional_and_ranges(srv: Running, tmp_path: Path) -> None:
    first = curl(srv.port, "/hello.txt", tmp=tmp_path)
    etag, lm = first.headers["etag"], first.headers["last-modified"]
    r = curl(srv.port, "/hello.txt", "-H", f"If-None-Match: {etag}", tmp=tmp_path)
    assert r.status == 304 and r.body == b""
    r = curl(srv.port, "/hello.txt", "-H", f"If-Modified-Since: {lm}", tmp=tmp_path)
    assert r.status == 304
    r = curl(srv.port, "/hello.txt", "-r", "0-4", tmp=tmp_path)
    assert r.status == 206 and r.body == b"hello"
    r = curl(srv.port, "/hello.txt", "-r", "100-", tmp=tmp_path)
    assert r.status == 416 and r.headers["content-range"] == "bytes */13"
    r = curl(srv.port, "/hello.txt", "-r", "0-1,5-6", tmp=tmp_path)
    assert r.status == 200 and r.body == b"hello, world\n"


def test_head_and_methods(srv: Running, tmp_path: Path) -> None:
    r = curl(srv.port, "/big.bin", "-I", tmp=tmp_path)
    assert r.status == 200 and r.headers["content-length"] == str(3 * 1024 * 1024 + 17)
    r = curl(srv.port, "/hello.txt", "-X", "POST", "-d", "x=1", tmp=tmp_path)
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


def test_precompressed(srv: Running, tmp_path: Path) -> None:
    r = curl(srv.port, "/app.js", "-H", "Accept-Encoding: gzip, br", tmp=tmp_path)
    assert r.body == b"BR-DATA" and r.headers["content-encoding"] == "br"
    assert r.headers["vary"] == "Accept-Encoding"
    r = curl(srv.port, "/app.js", "-H", "Accept-Encoding: gzip", tmp=tmp_path)
    assert r.body == b"GZ-DATA"
    r = curl(srv.port, "/app.js", tmp=tmp_path)
    assert r.body == b"console.log(1)\n" and "content-encoding" not in r.headers


def test_browse_over_http(srv: Running, tmp_path: Path) -> None:
    r = curl(srv.port, "/files/", "-H", "Accept: application/json", tmp=tmp_path)
    assert r.status == 200
    assert [i["Name"] for i in json.loads(r.body)] == ["a.txt", "b.txt"]
    r = curl(srv.port, "/files/?sort=size&order=desc", tmp=tmp_path)
    assert r.status == 200 and b"Index of /files/" in r.body
    assert r.headers["set-cookie"].startswith(("sort=size; Path=/files", "order=desc"))


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/.%2e/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/sub%2ffile.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/%252e%252e/secret.txt",
        "/link.txt",
        "/outdir/file.txt",
        "/outdir/",
        "/Caddyfile",
        "/private/data.txt",
        "//private/data.txt",
        "/./private/data.txt",
    ],
)
def test_traversal_over_the_socket(srv: Running, tmp_path: Path, path: str) -> None:
    r = curl(srv.port, path, tmp=tmp_path)
    assert r.status in (400, 404), (path, r.status)  # the HTTP layer may refuse first
    assert SECRET not in r.body
    assert b"internal only" not in r.body and b"browse /files" not in r.body


@pytest.mark.parametrize("path", ["/hello.txt%00", "/%00/../secret.txt", "/hello.txt%00.html"])
def test_nul_over_the_socket(srv: Running, tmp_path: Path, path: str) -> None:
    # The HTTP layer answers 400 for %00 before any handler runs; never the file.
    r = curl(srv.port, path, tmp=tmp_path)
    assert r.status in (400, 404)
    assert b"hello, world" not in r.body and SECRET not in r.body


def test_welcome_page_over_http(tmp_path: Path) -> None:
    root = tmp_path / "empty-site"
    root.mkdir()
    config = load_text(f"127.0.0.1:2015\nroot {root}\n")
    running = Running(build_chain(config.sites[0]))
    try:
        r = curl(running.port, "/", tmp=tmp_path)
        assert r.status == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert str(root).encode() in r.body and b"Caddyfile" in r.body
        assert f"127.0.0.1:{running.port}".encode() in r.body
        assert curl(running.port, "/nothing", tmp=tmp_path).status == 404
    finally:
        running.close()


def test_two_range_fields_use_the_first(srv: Running, tmp_path: Path) -> None:
    """Issue 16: with two Range fields the first holds, as nginx does, never the last."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-1\r\n"
            b"Range: bytes=5-6\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    assert b"Content-Range: bytes 0-1/13" in head
    assert body == b"he"
