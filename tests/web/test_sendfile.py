"""The HTTP send path: the compiled send loop (meshkit._fastpath) and its pure-Python twin
(meshkit.web.sendfile), on real sockets, compared on generated input."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import sendfile as pysend
from meshkit.web.sendfile import (
    SEND_AGAIN,
    SEND_DONE,
    SEND_TRUNCATED,
    SendPath,
    load_send_path,
)

_fastpath = load_fastpath()
HAVE_C = _fastpath is not None and hasattr(_fastpath, "send_head_and_file")

IMPLS = [
    pytest.param(True, id="c", marks=pytest.mark.skipif(not HAVE_C, reason="not built")),
    pytest.param(False, id="py"),
]


@pytest.fixture(params=IMPLS)
def path(request: pytest.FixtureRequest) -> SendPath:
    return load_send_path(bool(request.param))


def pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(sending end, receiving end) of a non-blocking AF_UNIX stream socketpair."""
    a, b = socket.socketpair()
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def tcp_pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.socket()
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        a.connect(lsock.getsockname())
        b, _ = lsock.accept()
    if sndbuf is not None:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def drain(sock: socket.socket) -> bytes:
    out = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not data:
            break
        out.append(data)
    return b"".join(out)


@pytest.fixture
def tmpfile() -> Iterator[Callable[[bytes], int]]:
    fds: list[int] = []

    def make(content: bytes) -> int:
        with tempfile.TemporaryFile() as f:
            f.write(content)
            f.flush()
            fd = os.dup(f.fileno())
        fds.append(fd)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


def test_constants_match() -> None:
    if HAVE_C:
        assert _fastpath is not None
        assert (_fastpath.SEND_DONE, _fastpath.SEND_AGAIN, _fastpath.SEND_TRUNCATED) == (
            SEND_DONE,
            SEND_AGAIN,
            SEND_TRUNCATED,
        )
    assert load_send_path(False).compiled is False


def test_send_bytes_whole(path: SendPath) -> None:
    a, b = pair()
    with a, b:
        assert path.send_bytes(a.fileno(), b"hello world", 0) == (11, SEND_DONE)
        assert path.send_bytes(a.fileno(), b"hello world", 6) == (5, SEND_DONE)
        assert path.send_bytes(a.fileno(), b"", 0) == (0, SEND_DONE)
        assert drain(b) == b"hello worldworld"
        with pytest.raises(ValueError):
            path.send_bytes(a.fileno(), b"abc", 4)


def test_send_bytes_eagain_then_rest(path: SendPath) -> None:
    a, b = pair(4096)
    data = os.urandom(1 << 20)
    with a, b:
        sent, state = path.send_bytes(a.fileno(), data, 0)
        assert state == SEND_AGAIN
        assert 0 < sent < len(data)
        got = [drain(b)]
        off = sent
        while off < len(data):
            sent, state = path.send_bytes(a.fileno(), data, off)
            off += sent
            got.append(drain(b))
        assert state == SEND_DONE
        got.append(drain(b))
        assert b"".join(got) == data


def test_send_bytes_peer_gone(path: SendPath) -> None:
    a, b = pair()
    b.close()
    with a, pytest.raises(OSError) as info:
        path.send_bytes(a.fileno(), b"x" * 1000, 0)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_head_and_file(path: SendPath, tmpfile: Callable[[bytes], int]) -> None:
    content = os.urandom(300_000)
    fd = tmpfile(content)
    a, b = tcp_pair()
    with a, b:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        got = []
        off, left, state = 5, 1000, SEND_AGAIN
        while state == SEND_AGAIN:
            sent, state = path.send_head_and_file(a.fileno(), head, fd, off, left)
            hs = min(sent, len(head))
            head = head[hs:]
            off += sent - hs
            left -= sent - hs
            got.append(drain(b))
        assert state == SEND_DONE
        assert left == 0
        got.append(drain(b))
        assert b"".join(got) == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + content[5:1005]


def test_head_and_file_truncated(path: SendPath, tmpfile: Callable[[bytes], int]) -> None:
    fd = tmpfile(b"0123456789")
    a, b = pair()
    with a, b:
        sent, state = path.send_head_and_file(a.fileno(), b"HEAD", fd, 4, 100)
        assert (sent, state) == (4 + 6, SEND_TRUNCATED)
        assert drain(b) == b"HEAD456789"
        # An offset at or past the end: nothing of the file, truncated at once.
        assert path.send_head_and_file(a.fileno(), b"", fd, 10, 1) == (0, SEND_TRUNCATED)
        # Length 0 sends the head only and is done.
        assert path.send_head_and_file(a.fileno(), b"H", fd, 50, 0) == (1, SEND_DONE)
        assert drain(b) == b"H"


def test_head_and_file_errors(path: SendPath, tmpfile: Callable[[bytes], int]) -> None:
    fd = tmpfile(b"abc")
    a, b = pair()
    with a, b:
        with pytest.raises(ValueError):
            path.send_head_and_file(a.fileno(), b"", fd, -1, 1)
        # A file fd that cannot be read (a directory's): the sendfile error is raised.
        dfd = os.open("/", os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                path.send_head_and_file(a.fileno(), b"", dfd, 0, 10)
        finally:
            os.close(dfd)
    a2, b2 = pair()
    b2.close()
    with a2, pytest.raises(OSError) as info:
        path.send_head_and_file(a2.fileno(), b"x" * 10, fd, 0, 3)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_file_shrinks_while_sending(path: SendPath) -> None:
    """The file is truncated between two calls (after EAGAIN): the next call says so."""
    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        a, b = pair(4096)
        with a, b:
            sent, state = path.send_head_and_file(a.fileno(), b"", f.fileno(), 0, 1 << 20)
            assert state == SEND_AGAIN
            os.ftruncate(f.fileno(), sent)
            drain(b)
            assert path.send_head_and_file(a.fileno(), b"", f.fileno(), sent, (1 << 20) - sent) == (
                0,
                SEND_TRUNCATED,
            )


def _run_to_end(
    path: SendPath, sndbuf: int, head: bytes, fd: int, offset: int, length: int
) -> tuple[bytes, int, int]:
    """Call send_head_and_file until it is not SEND_AGAIN, draining the peer in between:
    (bytes the peer got, final state, total sent reported)."""
    a, b = pair(sndbuf)
    got: list[bytes] = []
    total = 0
    with a, b:
        state = SEND_AGAIN
        rounds = 0
        while state == SEND_AGAIN:
            sent, state = path.send_head_and_file(a.fileno(), head, fd, offset, length)
            total += sent
            hs = min(sent, len(head))
            head = head[hs:]
            offset += sent - hs
            length -= sent - hs
            got.append(drain(b))
            rounds += 1
            assert rounds < 100_000
        got.append(drain(b))
    return b"".join(got), state, total


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.binary(max_size=3000),
    content=st.binary(max_size=200_000),
    offset=st.integers(0, 210_000),
    length=st.integers(0, 220_000),
    sndbuf=st.sampled_from([2048, 8192, 1 << 20]),
)
def test_twins_agree(head: bytes, content: bytes, offset: int, length: int, sndbuf: int) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(content)
        f.flush()
        expect_file = content[offset : offset + length]
        expect_state = SEND_DONE if len(expect_file) == length else SEND_TRUNCATED
        results = []
        impls = [False, True] if HAVE_C else [False]
        for compiled in impls:
            got, state, total = _run_to_end(
                load_send_path(compiled), sndbuf, head, f.fileno(), offset, length
            )
            assert got == head + expect_file
            assert state == expect_state
            assert total == len(got)
            results.append((got, state, total))
        assert all(r == results[0] for r in results)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300_000), offset=st.integers(0, 300_000))
def test_twins_agree_bytes(data: bytes, offset: int) -> None:
    offset = min(offset, len(data))
    impls = [False, True] if HAVE_C else [False]
    for compiled in impls:
        send = load_send_path(compiled).send_bytes
        a, b = pair(8192)
        with a, b:
            got = []
            off = offset
            state = SEND_AGAIN
            while state == SEND_AGAIN:
                sent, state = send(a.fileno(), data, off)
                off += sent
                got.append(drain(b))
            got.append(drain(b))
            assert b"".join(got) == data[offset:]


def test_python_twin_is_the_module_functions() -> None:
    twin = load_send_path(False)
    assert twin.send_bytes is pysend.send_bytes
    assert twin.send_head_and_file is pysend.send_head_and_file


def test_extensions_disabled_picks_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_NO_EXTENSIONS", "1")
    assert load_send_path().compiled is False
    with pytest.raises(ImportError):
        load_send_path(True)
