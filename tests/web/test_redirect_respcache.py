"""The file server's canonical 301s (`/dir/index.html` -> `/dir/`, `/dir` -> `/dir/`,
`/file/` -> `/file`) remembered by the response cache: a repeated request head is answered
from the copy with the same bytes (bar Date), and no longer once the index file or the folder
the redirect depends on changes or goes. On real sockets, over both send paths."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.message import Request, Response
from meshkit.web.respcache import ResponseCache
from meshkit.web.router import Router
from meshkit.web.site import Address, Site
from support.httpserver_util import Reader, Reply, ServerThread, connect, get
from support.polling import wait_until
from support.respcache_lab import Counting

OLD = 1_600_000_000  # a timestamp well in the past


class CountingRouter:
    """A port's Router (from a Caddyfile), counting the requests that reach it."""

    validated_responses = True

    def __init__(self, router: Router) -> None:
        self.router = router
        self.calls = 0

    def __call__(self, req: Request) -> object:
        self.calls += 1
        return self.router(req)


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "index.html").write_bytes(b"<p>sub</p>")
    (root / "a.txt").write_bytes(b"a")
    for p in (root / "sub" / "index.html", root / "a.txt", root / "sub", root):
        os.utime(p, (OLD, OLD))
    return root


def file_server(root: Path) -> Counting:
    return Counting(Site(addresses=[Address("127.0.0.1", host="127.0.0.1")], root=str(root)))


def ask(reader: Reader, sock: object, raw: bytes, method: str = "GET") -> Reply:
    sock.sendall(raw)  # type: ignore[attr-defined]
    return reader.response(method=method)


def bar_date(reply: Reply) -> list[tuple[str, str]]:
    return [h for h in reply.headers if h[0] != "Date"]


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/sub/index.html", "/sub/"),
        ("/sub/index.html?a=1&b=%2F", "/sub/?a=1&b=%2F"),  # the query as sent
        ("/sub", "/sub/"),
        ("/sub?x=y", "/sub/?x=y"),
        ("/a.txt/", "/a.txt"),
        ("/%73ub/index.html", "/%73ub/"),  # the path as the client spelled it
    ],
)
def test_canonical_redirect_answered_identically_from_the_cache(
    serve: Callable[..., ServerThread], tmp_path: Path, path: str, location: str
) -> None:
    fs = file_server(make_root(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        replies = [ask(reader, sock, get(path)) for _ in range(3)]
        head = get(path).replace(b"GET", b"HEAD", 1)
        heads = [ask(reader, sock, head, "HEAD") for _ in range(2)]
    first = replies[0]
    assert first.status == 301 and first.body == b""
    assert first.header("Location") == location
    assert first.header("Content-Length") == "0"
    for r in replies[1:]:
        assert (r.status, r.reason, r.version, r.body) == (301, first.reason, first.version, b"")
        assert bar_date(r) == bar_date(first)
    for r in heads:
        assert r.status == 301 and r.header("Location") == location
        assert bar_date(r) == bar_date(heads[0])
    assert fs.calls == 2  # one GET and one HEAD ran the handler; the repeats did not
    assert len(st.server._cache) == 2


def test_index_redirect_stops_once_the_index_file_goes(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    fs = file_server(root)
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert ask(reader, sock, get("/sub/index.html")).status == 301
        assert fs.calls == 1
        (root / "sub" / "index.html").unlink()
        for _ in range(2):
            assert ask(reader, sock, get("/sub/index.html")).status == 404
        assert fs.calls == 3  # 404s are never remembered
        # back (another inode): redirected again, remembered again
        (root / "sub" / "index.html").write_bytes(b"<p>new</p>")
        for _ in range(3):
            reply = ask(reader, sock, get("/sub/index.html"))
            assert reply.status == 301 and reply.header("Location") == "/sub/"
        assert fs.calls == 4


def test_index_redirect_stops_once_the_index_becomes_a_folder(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    fs = file_server(root)
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert ask(reader, sock, get("/sub/index.html")).status == 301
        (root / "sub" / "index.html").unlink()
        (root / "sub" / "index.html").mkdir()
        (root / "sub" / "index.html" / "index.html").write_bytes(b"inner")
        reply = ask(reader, sock, get("/sub/index.html"))
        # now a folder asked for without its slash: the other canonical redirect
        assert reply.status == 301 and reply.header("Location") == "/sub/index.html/"
        assert fs.calls == 2


def test_folder_redirect_follows_the_folder(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    fs = file_server(root)
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert ask(reader, sock, get("/sub")).header("Location") == "/sub/"
        assert fs.calls == 1
        # the folder changes (a new file in it): asked again, still a redirect
        (root / "sub" / "new.txt").write_bytes(b"n")
        os.utime(root / "sub", (OLD + 10, OLD + 10))
        for _ in range(2):
            assert ask(reader, sock, get("/sub")).status == 301
        assert fs.calls == 2
        # the folder goes and a file takes its name: the file, not the remembered redirect
        shutil.rmtree(root / "sub")
        (root / "sub").write_bytes(b"a file now")
        reply = ask(reader, sock, get("/sub"))
        assert (reply.status, reply.body) == (200, b"a file now")
        assert fs.calls == 3


def test_file_slash_redirect_stops_once_the_file_goes(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    fs = file_server(root)
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert ask(reader, sock, get("/a.txt/")).header("Location") == "/a.txt"
        (root / "a.txt").unlink()
        assert ask(reader, sock, get("/a.txt/")).status == 404
        assert fs.calls == 2


def test_logged_site_remembers_the_redirect_and_logs_every_hit(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    logfile = tmp_path / "access.log"
    ports = plan(load_text(f":8000 {{\n root {root}\n log {logfile}\n}}\n", "Caddyfile"))
    h = CountingRouter(ports[8000].router())
    st = serve(h)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert ask(reader, sock, get("/sub/index.html")).status == 301
    assert h.calls == 1
    assert wait_until(lambda: logfile.exists() and logfile.read_text().count("\n") >= 3)
    lines = logfile.read_text().splitlines()
    assert len(lines) == 3
    assert all('"GET /sub/index.html HTTP/1.1" 301 0' in line for line in lines)


def test_dynamic_site_runs_the_handlers_for_every_redirect(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    root = make_root(tmp_path)
    text = f":8000 {{\n root {root}\n header / X-Client {{remote}}\n}}\n"
    h = CountingRouter(plan(load_text(text, "Caddyfile"))[8000].router())
    st = serve(h)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            reply = ask(reader, sock, get("/sub"))
            assert reply.status == 301 and reply.header("X-Client") == "127.0.0.1"
    assert h.calls == 3 and len(st.server._cache) == 0


def test_make_keeps_only_validated_redirects() -> None:
    moved = Response(301, body=b"")
    moved.headers.add("Location", "/x/")
    assert ResponseCache.make(moved, "1.1", "GET") is None  # no validators: not remembered
    moved.validators = (("/nonexistent", 1, 1, 0, 0, 0),)
    entry = ResponseCache.make(moved, "1.1", "GET")
    assert entry is not None and entry.status == 301 and entry.length == 0
    assert not entry.valid()
    found = Response(302, body=b"", validators=moved.validators)
    assert ResponseCache.make(found, "1.1", "GET") is None  # other redirects: never
