"""The response cache: file responses remembered by request head bytes, answered again only
while their files stat the same; on real sockets with both send paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.web import fileserver
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.filecache import Entry
from meshkit.web.message import FileBody, Headers, Request, Response
from meshkit.web.respcache import CachedResponse, ResponseCache
from meshkit.web.router import Route, Router, site_is_static
from meshkit.web.site import Address, Site
from support.httpserver_util import Reader, ServerThread, connect, get
from support.polling import wait_until
from support.respcache_lab import Counting

OLD = 1_600_000_000  # a timestamp well in the past


@pytest.fixture(autouse=True)
def _fresh_folders(trust_fresh_folders: None) -> None:
    """Every test here: see tests/web/conftest.py."""


def site(root: Path, **kw: object) -> Site:
    s = Site(addresses=[Address("127.0.0.1", host="127.0.0.1")], root=str(root))
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def old(*paths: Path) -> None:
    for p in paths:
        os.utime(p, (OLD, OLD))


def fetch(reader: Reader, sock: object, raw: bytes, method: str = "GET") -> tuple[int, bytes]:
    sock.sendall(raw)  # type: ignore[attr-defined]
    reply = reader.response(method=method)
    return reply.status, reply.body


def test_repeats_answered_from_cache_until_the_file_changes(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"first")
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"first")
        assert fs.calls == 1
        # same size, other content and mtime: answered anew
        (tmp_path / "a.txt").write_bytes(b"other")
        os.utime(tmp_path / "a.txt", (OLD + 5, OLD + 5))
        assert fetch(reader, sock, get("/a.txt")) == (200, b"other")
        assert fetch(reader, sock, get("/a.txt")) == (200, b"other")
        assert fs.calls == 2
        # another head (one more field): its own entry
        assert fetch(reader, sock, get("/a.txt", extra="X-A: 1\r\n")) == (200, b"other")
        assert fs.calls == 3
        # HEAD: head only, also from the cache
        head = get("/a.txt").replace(b"GET", b"HEAD", 1)
        for _ in range(2):
            sock.sendall(head)
            reply = reader.response(method="HEAD")
            assert reply.status == 200 and reply.body == b""
            assert reply.header("Content-Length") == "5"
        assert fs.calls == 4
        (tmp_path / "a.txt").unlink()
        assert fetch(reader, sock, get("/a.txt"))[0] == 404
        assert fetch(reader, sock, get("/a.txt"))[0] == 404
        assert fs.calls == 6  # errors are never remembered


def test_cached_reply_is_the_same_bytes(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(b"<p>hi</p>")
    old(tmp_path)
    st = serve(Counting(site(tmp_path)))
    with connect(st.port) as sock:
        reader = Reader(sock)
        replies = []
        for _ in range(2):
            sock.sendall(get("/"))
            replies.append(reader.response())
    first, second = replies
    assert first.body == second.body == b"<p>hi</p>"
    drop_date = [h for h in first.headers if h[0] != "Date"]
    assert drop_date == [h for h in second.headers if h[0] != "Date"]
    assert [k for k, _ in first.headers] == [k for k, _ in second.headers]


def test_large_file_sendfile_and_release(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    content = os.urandom(300_000)
    (tmp_path / "big.bin").write_bytes(content)
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/big.bin")) == (200, content)
        sock.sendall(get("/big.bin", extra="Range: bytes=10-19\r\n"))
        reply = reader.response()
        assert reply.status == 206 and reply.body == content[10:20]
    assert fs.calls == 2
    entry = st.run(lambda: fs.cache.lookup(str(tmp_path / "big.bin")))
    assert isinstance(entry, Entry)
    # the file cache's reference and one per remembered response (200 and 206); responses
    # in flight hold one more until their last byte is sent
    assert wait_until(lambda: entry.refs == 3)
    st.run(lambda: st.server.set_handler(fs))  # a reload forgets remembered responses
    assert entry.refs == 1


def test_index_choice_follows_the_folder(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "index.htm").write_bytes(b"htm")
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        assert fetch(reader, sock, get("/")) == (200, b"htm")
        assert fetch(reader, sock, get("/")) == (200, b"htm")
        assert fs.calls == 1
        # an earlier index name appears: the folder changed, so the cache is not used
        (tmp_path / "index.html").write_bytes(b"html")
        os.utime(tmp_path, (OLD + 10, OLD + 10))
        assert fetch(reader, sock, get("/")) == (200, b"html")
        assert fetch(reader, sock, get("/")) == (200, b"html")
        assert fs.calls == 2  # the first index name depends on its own stat only
        (tmp_path / "index.html").unlink()
        assert fetch(reader, sock, get("/")) == (200, b"htm")


def test_precompressed_sibling_follows_the_folder(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "app.js").write_bytes(b"plain")
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(fs)
    ae = "Accept-Encoding: gzip\r\n"
    with connect(st.port) as sock:
        reader = Reader(sock)
        assert fetch(reader, sock, get("/app.js", extra=ae)) == (200, b"plain")
        assert fetch(reader, sock, get("/app.js", extra=ae)) == (200, b"plain")
        assert fs.calls == 1
        (tmp_path / "app.js.gz").write_bytes(b"zipped")
        old(tmp_path)
        os.utime(tmp_path, (OLD + 20, OLD + 20))
        sock.sendall(get("/app.js", extra=ae))
        reply = reader.response()
        assert reply.body == b"zipped" and reply.header("Content-Encoding") == "gzip"


def test_not_remembered_without_a_validating_handler(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    calls: list[str] = []

    def handler(request: Request) -> Response:
        calls.append(request.path)
        return Response(200, Headers(), b"x", validators=())

    st = serve(handler)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/")) == (200, b"x")
    assert len(calls) == 3 and len(st.server._cache) == 0


@pytest.mark.parametrize("static", [True, False])
def test_router_keeps_validators_of_static_routes_only(
    serve: Callable[..., ServerThread], tmp_path: Path, static: bool
) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(Router([Route(Address("x"), fs, static)]))
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"a")
    assert fs.calls == (1 if static else 3)


def test_pipelined_and_bodies_go_through_the_handler(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    old(tmp_path)
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/a.txt") + get("/a.txt"))
        assert reader.response().body == b"a" and reader.response().body == b"a"
        assert fs.calls == 2 and len(st.server._cache) == 0
        with_body = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok"
        for _ in range(2):
            sock.sendall(with_body)
            assert reader.response().body == b"a"
        assert fs.calls == 4 and len(st.server._cache) == 0
        # Connection: close is answered by the handler and closes
        sock.sendall(get("/a.txt", extra="Connection: close\r\n"))
        assert reader.response().body == b"a"
        assert reader.closed()
    assert fs.calls == 5


def test_plan_marks_static_sites(tmp_path: Path) -> None:
    text = (
        f"127.0.0.1:8001 {{\n root {tmp_path}\n gzip\n browse /d\n}}\n"
        f"127.0.0.1:8002 {{\n root {tmp_path}\n log stdout\n}}\n"
        f"127.0.0.1:8003 {{\n root {tmp_path}\n log stdout\n header / X-A {{remote}}\n}}\n"
    )
    ports = plan(load_text(text, "Caddyfile"))
    assert [r.static for r in ports[8001].routes] == [True]
    assert [r.static for r in ports[8002].routes] == [True]  # log is replayed on hits
    assert [r.static for r in ports[8003].routes] == [False]


def test_cache_bounds_and_release(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    refs = [1]

    def acquire() -> None:
        refs[0] += 1

    def release() -> None:
        refs[0] -= 1

    st = os.stat(path)
    sig = (str(path), st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    try:
        resp = Response(
            200, Headers(), FileBody(fd, 0, 10, 10, None, release, acquire), validators=(sig,)
        )
        cache = ResponseCache(max_entries=2)
        for i in range(3):
            entry = ResponseCache.make(resp, "1.1", "GET")
            assert isinstance(entry, CachedResponse) and entry.valid()
            cache.put(b"k%d" % i, entry)
        assert len(cache) == 2 and refs[0] == 3 and cache.get(b"k0") is None
        wire = cache.entries[b"k1"].refresh(OLD)
        assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 10\r\n" in wire
        assert b"Date: " in wire and wire.endswith(b"\r\n\r\n")
        cache.clear()
        assert refs[0] == 1
        assert ResponseCache.make(Response(200, Headers(), b"x"), "1.1", "GET") is None
        big = Response(200, Headers(), b"x" * 70_000, validators=(sig,))
        assert ResponseCache.make(big, "1.1", "GET") is None
        os.utime(path, (OLD, OLD))
        assert not ResponseCache.make(
            Response(200, Headers(), b"x", validators=(sig,)), "1.1", "GET"
        ).valid()  # type: ignore[union-attr]
    finally:
        os.close(fd)


def test_recently_changed_folder_is_not_a_validator(
    serve: Callable[..., ServerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fileserver, "_RACY_NS", 1 << 62)  # every folder counts as fresh
    (tmp_path / "index.htm").write_bytes(b"htm")
    (tmp_path / "index.html").write_bytes(b"html")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.htm").write_bytes(b"d")
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert fetch(reader, sock, get("/")) == (200, b"html")  # first name: cached
            assert fetch(reader, sock, get("/d/")) == (200, b"d")  # folder-dependent: not
    assert fs.calls == 3


def test_file_backed_entries_are_bounded(tmp_path: Path) -> None:
    refs = [1]

    def acquire() -> None:
        refs[0] += 1

    def release() -> None:
        refs[0] -= 1

    cache = ResponseCache(max_files=2)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for i in range(4):
            body = FileBody(fd, 0, 10, 10, None, release, acquire)
            entry = ResponseCache.make(Response(200, Headers(), body, validators=()), "1.1", "GET")
            assert entry is not None
            cache.put(b"k%d" % i, entry)
            small = ResponseCache.make(Response(200, Headers(), b"x", validators=()), "1.1", "GET")
            assert small is not None
            cache.put(b"s%d" % i, small)
        assert cache.files == 2 and refs[0] == 3
        # only entries holding a file go for the file bound (oldest first)
        assert sorted(cache.entries) == [b"k2", b"k3", b"s0", b"s1", b"s2", b"s3"]
        cache.drop(b"k3")
        assert cache.files == 1 and refs[0] == 2
        cache.clear()
        assert cache.files == 0 and refs[0] == 1 and cache.used == 0
    finally:
        os.close(fd)


def test_not_modified_is_remembered_too(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    (tmp_path / "a.css").write_bytes(b"body{}")
    fs = Counting(site(tmp_path))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/a.css"))
        etag = reader.response().header("ETag")
        assert etag
        again = get("/a.css", extra=f"If-None-Match: {etag}\r\n")
        for _ in range(2):
            sock.sendall(again)
            reply = reader.response()
            assert reply.status == 304 and reply.body == b""
            assert reply.header("ETag") == etag and reply.header("Content-Length") is None
        assert fs.calls == 2
        (tmp_path / "a.css").write_bytes(b"body{color:red}")
        sock.sendall(again)
        assert reader.response().status == 200


def test_site_is_static() -> None:
    class Config:
        def __init__(self, keeps: object) -> None:
            self.keeps_static = keeps

    assert site_is_static({})
    assert site_is_static({"root": "/srv", "gzip": object(), "browse": [], "mime": {}})
    assert site_is_static({"root": "/srv", "log": object()})
    assert not site_is_static({"root": "/srv", "log": object(), "rewrite": object()})
    assert site_is_static({"root": "/srv", "header": Config(True)})
    assert not site_is_static({"header": Config(False)})
    assert not site_is_static({"header": Config("yes")})  # only a real True counts


# -- sites with an access log: answered from the cache, every answer still logged


class CountingRouter:
    """A port's Router, counting the requests that reach it."""

    validated_responses = True

    def __init__(self, router: Router) -> None:
        self.router = router
        self.calls = 0

    def __call__(self, req: Request) -> object:
        self.calls += 1
        return self.router(req)


def logged_site(tmp_path: Path, log: str, extra: str = "") -> CountingRouter:
    text = f":8000 {{\n root {tmp_path / 'www'}\n {log}\n{extra}}}\n"
    ports = plan(load_text(text, "Caddyfile"))
    return CountingRouter(ports[8000].router())


def log_lines(path: Path, n: int) -> list[str]:
    assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= n)
    lines = path.read_text().splitlines()
    assert len(lines) == n, lines
    return lines


def www(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_bytes(b"hello")
    (tmp_path / "www" / "big.bin").write_bytes(b"b" * 300_000)
    old(tmp_path / "www")


def test_logged_site_hits_write_the_same_line(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    www(tmp_path)
    logfile = tmp_path / "access.log"
    h = logged_site(tmp_path, f"log {logfile}")
    st = serve(h)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"hello")
        head = get("/a.txt").replace(b"GET", b"HEAD", 1)
        for _ in range(2):
            sock.sendall(head)
            assert reader.response(method="HEAD").body == b""
    assert h.calls == 2 and len(st.server._cache) == 2
    lines = log_lines(logfile, 5)

    def strip_when(line: str) -> str:
        before, rest = line.split(" [", 1)
        return before + " [] " + rest.split("] ", 1)[1]

    assert [strip_when(x) for x in lines] == [
        '127.0.0.1 - - [] "GET /a.txt HTTP/1.1" 200 5'
    ] * 3 + ['127.0.0.1 - - [] "HEAD /a.txt HTTP/1.1" 200 0'] * 2


def test_logged_site_hits_carry_their_own_connection(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    www(tmp_path)
    logfile = tmp_path / "access.log"
    fmt = '"{remote} {port} {method} {uri} {proto} {status} {size} {>User-Agent} {latency_ms}"'
    h = logged_site(tmp_path, f"log / {logfile} {fmt}")
    st = serve(h)
    ua = "User-Agent: t/1\r\n"
    ports = []
    for _ in range(2):
        with connect(st.port) as sock:
            reader = Reader(sock)
            for _ in range(2):
                assert fetch(reader, sock, get("/a.txt", extra=ua)) == (200, b"hello")
                reply_big = fetch(reader, sock, get("/big.bin", extra=ua))
                assert reply_big == (200, b"b" * 300_000)  # sendfile from the cache
            ports.append(sock.getsockname()[1])
    assert h.calls == 2
    lines = log_lines(logfile, 8)
    want = []
    for port in ports:
        for _ in range(2):
            want.append(f"127.0.0.1 {port} GET /a.txt HTTP/1.1 200 5 t/1")
            want.append(f"127.0.0.1 {port} GET /big.bin HTTP/1.1 200 300000 t/1")
    assert [x.rsplit(" ", 1)[0] for x in lines] == want
    assert all(x.rsplit(" ", 1)[1].isdigit() for x in lines)


def test_logged_site_except_and_ipmask(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    www(tmp_path)
    (tmp_path / "www" / "skip").mkdir()
    (tmp_path / "www" / "skip" / "s.txt").write_bytes(b"s")
    old(tmp_path / "www", tmp_path / "www" / "skip")
    logfile = tmp_path / "access.log"
    h = logged_site(
        tmp_path,
        f'log / {logfile} "{{remote}} {{uri}}" {{\n ipmask 255.255.0.0\n except /skip\n }}',
    )
    st = serve(h)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert fetch(reader, sock, get("/skip/s.txt")) == (200, b"s")
            assert fetch(reader, sock, get("/a.txt")) == (200, b"hello")
    assert h.calls == 2
    assert log_lines(logfile, 2) == ["127.0.0.0 /a.txt"] * 2


def test_logged_site_reload_drops_old_log(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    www(tmp_path)
    first, second = tmp_path / "one.log", tmp_path / "two.log"
    h1 = logged_site(tmp_path, f'log / {first} "{{uri}}"')
    st = serve(h1)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"hello")
        assert len(st.server._cache) == 1
        h2 = logged_site(tmp_path, f'log / {second} "{{uri}} 2"')
        st.run(lambda: st.server.set_handler(h2))
        assert len(st.server._cache) == 0
        for _ in range(2):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"hello")
    assert h1.calls == 1 and h2.calls == 1
    assert log_lines(second, 2) == ["/a.txt 2"] * 2
    assert log_lines(first, 2) == ["/a.txt"] * 2


@pytest.mark.parametrize(
    "extra",
    # directives whose work depends on more than the request head (the client address, a
    # file tried); their head-only forms keep a site cached (tests/web/test_rulesite_cache.py)
    [
        "header / X-A {remote}\n",
        "rewrite /x /b.txt /a.txt\n",
        "redir {\n  if {remote} is 192.0.2.9\n  /y /a.txt\n }\n",
    ],
)
def test_logged_site_with_other_directives_is_not_cached(
    serve: Callable[..., ServerThread], tmp_path: Path, extra: str
) -> None:
    www(tmp_path)
    logfile = tmp_path / "access.log"
    h = logged_site(tmp_path, f'log / {logfile} "{{uri}}"', " " + extra)
    st = serve(h)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            assert fetch(reader, sock, get("/a.txt")) == (200, b"hello")
    assert h.calls == 3 and len(st.server._cache) == 0
    assert log_lines(logfile, 3) == ["/a.txt"] * 3


def test_cached_entry_copies_the_request(tmp_path: Path) -> None:
    seen: list[tuple[Request, int]] = []
    req = Request("GET", "/a", "/a", remote_addr="192.0.2.1", remote_port=1, start_time=5.0)
    req.vars["k"] = "v"
    req.on_complete.append(lambda r, resp, n: seen.append((r, n)))
    resp = Response(200, Headers([("X", "1")]), b"abc", validators=())
    entry = ResponseCache.make(resp, "1.1", "GET", req)
    assert entry is not None and entry.callbacks and entry.response is not None
    req.vars["request_id"] = "first"  # set by a callback after the entry was made
    copy = entry.for_hit("192.0.2.2", 2, "127.0.0.1", 80, 9.0)
    assert copy is not req and copy.headers is req.headers
    assert (copy.remote_addr, copy.remote_port, copy.start_time) == ("192.0.2.2", 2, 9.0)
    assert copy.vars == {"k": "v"} and copy.on_complete == req.on_complete
    assert (req.remote_addr, req.remote_port, req.start_time) == ("192.0.2.1", 1, 5.0)
    assert entry.response.status == 200 and entry.response.headers.get("X") == "1"
    plain = ResponseCache.make(resp, "1.1", "GET", Request("GET", "/a", "/a"))
    assert plain is not None and plain.callbacks == () and plain.request is None
