"""Helpers for the HTTP server tests: a server on a uvloop loop in a thread, raw-socket
HTTP clients, and a small standalone server for child processes.

Run as a script (``python tests/web/httpserver_util.py PORT ROOT``) it serves ROOT's files
with HttpServer and a minimal FileBody handler and prints ``ready <compiled>`` when
listening: what the child-process tests (and, until ``meshkit web`` exists, nothing else)
use.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from meshkit.web.message import FileBody, Handler, Headers, Request, Response
from meshkit.web.sendfile import load_send_path
from meshkit.web.server import HttpServer

T = TypeVar("T")
HOST = "127.0.0.1"


class ServerThread:
    """An HttpServer on its own uvloop loop in a daemon thread, listening on HOST:<free>."""

    def __init__(self, handler: Handler, *, compiled: bool | None = None, **kwargs: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HttpServer(handler, **kwargs)
        if compiled is not None:
            self.server._send = load_send_path(compiled)
        self.call(self.server.listen(HOST, 0))
        self.port = self.server.addresses()[0][1]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, fn: Callable[[], T]) -> T:
        """Call fn on the server's loop (for non-thread-safe calls) and wait."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def stop(self) -> None:
        if self.loop.is_running():
            self.run(self.server.close_now)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Reply:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Reader:
    """Reads HTTP/1.1 responses off a socket, one after the other."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed in a line; got {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> tuple[int, str, str, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before a response head; got {self.buf!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        return int(status), reason[0] if reason else "", version, headers, raw

    def response(self, method: str = "GET") -> Reply:
        status, reason, version, headers, raw = self.head()
        reply = Reply(status, reason, version, headers, b"", raw)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return reply
        te = reply.header("Transfer-Encoding")
        cl = reply.header("Content-Length")
        if te and "chunked" in te.lower():
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while True:
                        line = self._line()
                        if not line:
                            break
                        k, _, v = line.decode("latin-1").partition(":")
                        reply.trailers.append((k, v.strip()))
                    break
                parts.append(self._exact(size))
                self._line()
            reply.body = b"".join(parts)
        elif cl is not None:
            reply.body = self._exact(int(cl))
        else:
            while self._fill():
                pass
            reply.body, self.buf = self.buf, b""
        return reply

    def closed(self, wait: float = 10.0) -> bool:
        """Whether the server closes the connection (after anything still buffered) within
        `wait` seconds."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)


def request(
    port: int,
    raw: bytes,
    method: str = "GET",
) -> tuple[Reply, bool]:
    """Send one raw request on a new connection: (the reply, whether the server closed)."""
    with connect(port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        reply = reader.response(method)
        closing = reply.header("Connection") == "close"
        return reply, reader.closed(10.0 if closing else 0.3)


def get(path: str = "/", host: str = "t.example", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def later(value: Response, gate: asyncio.Event | None = None) -> Response:
    if gate is not None:
        await gate.wait()
    await asyncio.sleep(0)
    return value


def file_handler(root: Path) -> Callable[[Request], Response]:
    """A minimal static handler: GET/HEAD of ROOT's files as FileBody (sendfile)."""

    def handler(request: Request) -> Response:
        name = root / (request.path.lstrip("/") or "index.html")
        if ".." in request.path.split("/") or not name.is_file():
            return Response.error(404)
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
        body = FileBody(fd, 0, size, size, release=lambda: os.close(fd))
        return Response(200, Headers([("Content-Type", "application/octet-stream")]), body)

    return handler


def cached_file_handler(root: Path, small: int = 16384) -> Callable[[Request], Response]:
    """Like file_handler, but keeps files open and small files' bytes in memory (what a real
    static file server does): the bench's stand-in for `meshkit web` until it exists."""
    cache: dict[str, tuple[int, int, bytes | None, Headers]] = {}

    def handler(request: Request) -> Response:
        entry = cache.get(request.path)
        if entry is None:
            name = root / (request.path.lstrip("/") or "index.html")
            if ".." in request.path.split("/") or not name.is_file():
                return Response.error(404)
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size <= small else None
            ctype = (
                "text/html; charset=utf-8" if name.suffix == ".html" else "application/octet-stream"
            )
            entry = (fd, size, data, Headers([("Content-Type", ctype)]))
            cache[request.path] = entry
        fd, size, data, headers = entry
        return Response(200, headers.copy(), FileBody(fd, 0, size, size, data=data))

    return handler


async def _serve_main(port: int, root: Path) -> None:
    server = HttpServer(cached_file_handler(root))
    await server.listen(HOST, port)
    print(f"ready {'compiled' if server.compiled else 'python'}", flush=True)
    await asyncio.Event().wait()


def run_awaitable(aw: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await aw

    return uvloop.run(wrap())


if __name__ == "__main__":
    uvloop.run(_serve_main(int(sys.argv[1]), Path(sys.argv[2])))
