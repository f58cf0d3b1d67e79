"""Mid-sized remembered responses (respcache.ZERO_COPY_FROM up to MAX_BODY) go out with
sendfile(2) on plain connections, from the file server's open file or from a memfd holding a
body made in memory, and as bytes over TLS: the same bytes either way, on both send paths,
with a reader slow enough that the socket fills; the memfd closes with its last reference."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.web.fileserver import FileServer
from meshkit.web.message import FileBody, Headers, Request, Response, Validator
from meshkit.web.respcache import MAX_BODY, ZERO_COPY_FROM, MemFile, ResponseCache
from meshkit.web.site import Address, Site
from support.httpserver_util import Reader, ServerThread, connect, get
from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import issue, make_ca

OLD = 1_600_000_000


@pytest.fixture(autouse=True)
def _fresh_folders(trust_fresh_folders: None) -> None:
    """Every test here: see tests/web/conftest.py."""


def _sig(path: Path) -> Validator:
    st = os.stat(path)
    return (str(path), st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _is_memfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:meshkit-response")
    except OSError:
        return False


def _memfds() -> int:
    """How many response memfds this process has open."""
    return sum(_is_memfd(int(fd)) for fd in os.listdir("/proc/self/fd"))


def test_entry_sizes_choose_bytes_memfd_or_the_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"v")
    sig = _sig(tmp_path / "f")
    small = ResponseCache.make(
        Response(200, Headers(), b"s" * (ZERO_COPY_FROM - 1), validators=(sig,)), "1.1", "GET"
    )
    assert small is not None and small.fd < 0
    data = os.urandom(ZERO_COPY_FROM + 5000)
    made = ResponseCache.make(Response(200, Headers(), data, validators=(sig,)), "1.1", "GET")
    assert made is not None and made.body == data and _is_memfd(made.fd)
    assert os.pread(made.fd, len(data) + 1, 0) == data and made.file_left == len(data)
    head = ResponseCache.make(Response(200, Headers(), data, validators=(sig,)), "1.1", "HEAD")
    assert head is not None and head.fd < 0 and head.body == b""  # no body, no memfd
    cache = ResponseCache()
    cache.put(b"k", made)
    fd = made.fd
    drop = made.release
    assert made.acquire is not None and drop is not None
    made.acquire()  # a response still sending keeps it open past the entry
    cache.clear()
    assert _is_memfd(fd)
    drop()
    assert not _is_memfd(fd)

    # a file body read into memory: its own fd is used (one reference more), not a memfd
    path = tmp_path / "mid.bin"
    path.write_bytes(data)
    ffd = os.open(path, os.O_RDONLY)
    refs = [1]

    def acquire() -> None:
        refs[0] += 1

    def release() -> None:
        refs[0] -= 1

    try:
        body = FileBody(ffd, 0, len(data), len(data), data, release, acquire)
        entry = ResponseCache.make(Response(200, Headers(), body, validators=(sig,)), "1.1", "GET")
        assert entry is not None and entry.fd == ffd and entry.body == data and refs[0] == 2
        entry.close()
        assert refs[0] == 1
    finally:
        os.close(ffd)
    probe = MemFile.of(b"x")
    assert probe is not None  # this kernel has memfds: the tests above ran them
    probe.release()


class Rendered:
    """A handler whose answer is made in memory (as markdown's) and depends on one file."""

    validated_responses = True

    def __init__(self, source: Path, body: bytes) -> None:
        self.source, self.body, self.calls = source, body, 0

    def __call__(self, req: Request) -> Response:
        self.calls += 1
        headers = Headers([("Content-Type", "text/html")])
        return Response(200, headers, self.body, validators=(_sig(self.source),))


def _slow_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the server's sends fill up
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def test_mid_sized_hits_are_whole_with_a_slow_reader(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    data = os.urandom(MAX_BODY - 100)  # read into memory by the file cache, sent by sendfile
    (tmp_path / "mid.bin").write_bytes(data)
    rendered = os.urandom(ZERO_COPY_FROM * 2)
    (tmp_path / "doc.md").write_text("# source\n")
    os.utime(tmp_path, (OLD, OLD))
    fs = FileServer(Site(addresses=[Address("127.0.0.1", host="127.0.0.1")], root=str(tmp_path)))
    st = serve(fs)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(get("/mid.bin"))
            assert reader.response().body == data
    large = os.urandom(6 << 20)  # beyond MAX_BODY (a file-only entry) and the send buffer
    (tmp_path / "large.bin").write_bytes(large)
    os.utime(tmp_path, (OLD, OLD))
    with _slow_client(st.port) as sock:
        reader = Reader(sock)
        for path, want in (("/mid.bin", data), ("/large.bin", large)) * 2:
            # a small receive buffer: the socket fills, the rest goes when it drains
            sock.sendall(get(path))
            assert reader.response().body == want
    handler = Rendered(tmp_path / "doc.md", rendered)
    st2 = serve(handler)
    with _slow_client(st2.port) as sock:
        reader = Reader(sock)
        for _ in range(4):
            sock.sendall(get("/doc.md"))
            reply = reader.response()
            assert reply.body == rendered and reply.header("Content-Length") == str(len(rendered))
    assert handler.calls == 1


def test_tls_hits_send_the_bytes(tmp_path: Path) -> None:
    """The same remembered entries answer TLS connections (bytes, encrypted) and plain ones
    (sendfile) of one server."""
    ca = make_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "a", ["a.test"])
    www = tmp_path / "www"
    (www / "md").mkdir(parents=True)
    data = os.urandom(25 * 1024)
    (www / "mid.bin").write_bytes(data)
    (www / "md" / "doc.md").write_text("# Title\n\n" + "A paragraph of text. " * 1200 + "\n")
    os.utime(www, (OLD, OLD))
    tls_port, plain_port = free_port(), free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"a.test:{tls_port} {{\n root {www}\n markdown /md\n tls {cert} {key}\n}}\n"
        f"http://127.0.0.1:{plain_port} {{\n root {www}\n markdown /md\n}}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf)])
    try:
        wait_tcp(tls_port, proc)
        wait_tcp(plain_port, proc)
        out = tmp_path / "out"
        for base, extra in (
            (f"https://a.test:{tls_port}", ["--cacert", str(ca.path), "--resolve",
                                            f"a.test:{tls_port}:127.0.0.1"]),
            (f"http://127.0.0.1:{plain_port}", []),
        ):  # fmt: skip
            urls = [f"{base}/mid.bin"] * 3 + [f"{base}/md/doc.md"] * 3
            args = ["curl", "-sS", "--http1.1", "--max-time", "20", *extra]
            for i, url in enumerate(urls):
                args += ["-o", str(out / f"{i}"), url]
            r = subprocess.run([*args, "--create-dirs"], capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert all((out / f"{i}").read_bytes() == data for i in range(3))
            pages = {(out / f"{i}").read_bytes() for i in range(3, 6)}
            assert len(pages) == 1
            page = pages.pop()
            assert len(page) > ZERO_COPY_FROM and b"<h1>Title</h1>" in page
    finally:
        proc.stop()


def test_too_many_files_drop_the_file_range_not_the_entry(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"v")
    sig = _sig(tmp_path / "f")
    cache = ResponseCache(max_files=2)
    bodies = [os.urandom(ZERO_COPY_FROM) for _ in range(4)]
    base = _memfds()
    for i, body in enumerate(bodies):
        entry = ResponseCache.make(Response(200, Headers(), body, validators=(sig,)), "1.1", "GET")
        assert entry is not None and _is_memfd(entry.fd)
        cache.put(b"k%d" % i, entry)
    assert len(cache) == 4 and cache.files == 2  # all remembered, two with their memfd
    kept = [cache.entries[b"k%d" % i] for i in range(4)]
    assert [e.fd >= 0 for e in kept] == [False, False, True, True]
    assert [e.body for e in kept] == bodies
    assert _memfds() == base + 2
    used = cache.used
    cache.clear()
    assert cache.used == 0 and used > 0 and _memfds() == base
