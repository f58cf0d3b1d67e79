"""HEAD through the proxy keeps its upstream connection: the answer to a HEAD request ends
with its head (whatever Content-Length or Transfer-Encoding say), so it is read without the
parser and the connection goes back to the pool; a head followed by stray bytes, or one the
fast reader leaves to httptools, still closes it. Against a raw-socket backend."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.web.proxy.client import CONN, _Conn, _head_reply
from support.webproxy import _close, _proxy

BODY = b"hello from the backend"


class HeadBackend:
    """Answers GET with BODY and HEAD with the same head and no body; /te answers with a
    chunked head, /stray sends bytes after a HEAD answer, /split sends the head in two
    writes (the parser's path)."""

    def __init__(self) -> None:
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.connections = 0
        self.socks: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                if path == b"/te":
                    fields = b"Transfer-Encoding: chunked\r\n"
                else:
                    fields = b"Content-Length: %d\r\n" % len(BODY)
                reply = b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n" + fields + b"\r\n"
                if method == b"GET":
                    reply += (
                        b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY) if path == b"/te" else BODY
                    )
                elif path == b"/stray":
                    reply += b"junk"
                if path == b"/split":
                    conn.sendall(reply[:10])
                    threading.Event().wait(0.05)
                    conn.sendall(reply[10:])
                else:
                    conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.lsock.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def backend() -> Iterator[HeadBackend]:
    b = HeadBackend()
    try:
        yield b
    finally:
        b.close()


def _head(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(f"HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize("path", ["/a", "/te"])
def test_head_keeps_the_upstream_connection(backend: HeadBackend, path: str) -> None:
    p = _proxy(f":2015\nproxy / 127.0.0.1:{backend.port}\n")
    try:
        for _ in range(4):
            reply = _head(p.port, path)  # type: ignore[attr-defined]
            head, _, rest = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and rest == b""
            assert b"X-Up: 1" in head
            if path == "/a":
                assert f"Content-Length: {len(BODY)}".encode() in head
        assert backend.connections == 1
    finally:
        _close(p)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/stray", "/split"])
def test_head_left_to_the_parser_or_followed_by_bytes_closes(
    backend: HeadBackend, path: str
) -> None:
    p = _proxy(f":2015\nproxy / 127.0.0.1:{backend.port}\n")
    try:
        for _ in range(2):
            reply = _head(p.port, path)  # type: ignore[attr-defined]
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n")
        # the compiled connection reads a head split over two reads itself (and keeps the
        # connection); the twin leaves it to httptools, which cannot end a HEAD answer
        kept = path == "/split" and CONN is not _Conn
        assert backend.connections == (1 if kept else 2)
    finally:
        _close(p)  # type: ignore[arg-type]


_LINES = st.sampled_from(
    [
        b"Content-Length: 5",
        b"Content-Length: x",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Connection: keep-alive",
        b"X-Spaced:   v  ",
        b"Bad Name: v",
        b"NoColon",
        b" folded",
        b"X-Bare: a\nb",
        b"Server: nginx",
    ]
)
_STATUS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 abc X",
    ]
)


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.done = True


@settings(max_examples=300, deadline=None)
@given(_STATUS, st.lists(_LINES, max_size=5))
def test_head_reply_agrees_with_httptools(status: bytes, lines: list[bytes]) -> None:
    """What the HEAD reader takes, httptools reads as the same status and fields."""
    raw = b"\r\n".join([status, *lines])
    got = _head_reply(raw)
    if got is None:
        return  # left to httptools (and the connection closed after it)
    code, headers, length, keep = got
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    try:
        parser.feed_data(raw + b"\r\n\r\n")
    except httptools.HttpParserError:
        pytest.fail(f"httptools refuses a head the HEAD reader took: {raw!r}")
    assert parsed.done and parser.get_status_code() == code and length == 0
    assert parsed.headers == headers
    closes = any(n.lower() == "connection" and "close" in v.lower() for n, v in parsed.headers)
    assert keep == (not closes)
