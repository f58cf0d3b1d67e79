"""HTTP/2 streams for meshkit.web.h2conn (no I/O of their own): the request body a stream
feeds (H2Body, with flow-control credit handed back as the handler reads), a stream's response
progress (Stream), the token bucket that meters resets, SETTINGS and PINGs (Bucket), and the
response's HEADERS (response_fields: lower-case names, no connection-specific fields, CR/LF/NUL
refused)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from h2.errors import ErrorCodes

from meshkit.web import http1
from meshkit.web.message import BodyTooLarge, Headers, Request, Response
from meshkit.web.output import _server_error
from meshkit.web.reqbody import BadRequestBody

__all__ = [
    "FLOOD_BURST",
    "FLOOD_RATE",
    "BodyOwner",
    "Bucket",
    "H2Body",
    "Stream",
    "answer_for",
    "response_fields",
]

log = logging.getLogger("meshkit.web")

FLOOD_BURST = 100  # resets (or SETTINGS, or PINGs) a client may send at once...
FLOOD_RATE = 10.0  # ...and then per second
_BAD = re.compile("[\r\n\0]")
_BAD_NAME = re.compile("[^!#$%&'*+.^_`|~0-9a-z-]")  # a token (RFC 9110), lower-case
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te"}
)


# Server push (the `push` directive): while a handler runs synchronously for an HTTP/2
# request, the function that pushes on its connection: push(path, method, headers) -> False
# once nothing more can be pushed (the client refused push, streams are full, the stream is
# gone). None over HTTP/1.1 (and h2c without push).
Pusher = Callable[[str, str, list[tuple[str, str]]], bool]
# (connection, stream id, host) of the running handler's request: a tuple is cheaper to set
# for every request than a bound function, and only the push directive asks for one
_current: list[tuple[Any, int, str] | None] = [None]
_asked = [0]  # calls of current_pusher so far (a response whose handler asked may push)
PUSHED_VAR = "http2.pushed"  # request.vars of a pushed request: push rules skip it


def current_pusher() -> Pusher | None:
    """The pusher of the HTTP/2 request whose handler is running now (see above)."""
    cur = _current[0]
    if cur is None:
        return None
    _asked[0] += 1
    conn, sid, host = cur
    return functools.partial(conn.push, sid, host)  # type: ignore[no-any-return]


def set_pusher(current: tuple[Any, int, str] | None) -> None:
    _current[0] = current


def pusher_calls() -> int:
    """How many times a handler asked for its pusher: a response whose handler did (between
    two readings) may push, and is not remembered (meshkit.web.respcache)."""
    return _asked[0]


class BodyOwner(Protocol):
    """What a request body needs of its connection."""

    @property
    def read_timeout(self) -> float: ...

    def _reset(self, sid: int, code: ErrorCodes) -> None: ...

    def _consumed(self, sid: int, n: int) -> None: ...


class Bucket:
    """A token bucket: `take()` is False once more than the burst was taken faster than the
    rate gives back."""

    __slots__ = ("_at", "_tokens")

    def __init__(self) -> None:
        self._tokens = float(FLOOD_BURST)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(FLOOD_BURST, self._tokens + (now - self._at) * FLOOD_RATE)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class H2Body:
    """A request body arriving as DATA frames (meshkit.web.message.Body)."""

    def __init__(self, conn: BodyOwner, stream_id: int, length: int | None) -> None:
        self.limit: int | None = None
        self._conn = conn
        self._sid = stream_id
        self._length = length
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._read = 0
        self._done = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def done(self) -> bool:
        return self._done or self._exc is not None

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self.limit is not None and self._length is not None and self._length > self.limit:
            raise BodyTooLarge(self.limit)
        while not self._chunks and not self._done:
            if self._exc is not None:
                raise self._exc
            fut = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(fut, self._conn.read_timeout)
            except asyncio.TimeoutError:
                self._conn._reset(self._sid, ErrorCodes.CANCEL)
                raise ConnectionResetError("the client sent no body bytes in time") from None
            finally:
                self._waiter = None
        if not self._chunks:
            return b""
        chunk = self._chunks[0]
        if len(chunk) > max_bytes:
            self._chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        else:
            self._chunks.popleft()
        n = len(chunk)
        self.buffered -= n
        self._read += n
        if self.limit is not None and self._read > self.limit:
            raise BodyTooLarge(self.limit)
        self._conn._consumed(self._sid, n)
        return chunk

    async def read_all(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def feed(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)
            self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class Stream:
    """One request and its response's progress."""

    __slots__ = (
        "body",
        "chunks",
        "closed",
        "eof",
        "file",
        "id",
        "queued",
        "release",
        "request",
        "response",
        "sent",
        "source",
        "src",
        "task",
        "waiter",
    )

    def __init__(self, sid: int, request: Request, body: H2Body | None) -> None:
        self.id = sid
        self.request = request
        self.body = body
        self.response: Response | None = None
        self.task: asyncio.Future[Any] | None = None  # the handler's
        self.source: asyncio.Task[None] | None = None  # pulling a streamed response body
        self.src: Any = None  # the nghttp2 engine's body Source (meshkit._h2ng)
        self.chunks: deque[bytes] = deque()  # response bytes not framed yet
        self.queued = 0
        self.file: list[int] | None = None  # [fd, offset, left] of a file body
        self.release: Any = None
        self.eof = False  # nothing more will be queued
        self.sent = 0
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None


def answer_for(exc: BaseException, request: Request) -> Response:
    if isinstance(exc, BodyTooLarge):
        response = Response.error(413)
        return response
    if isinstance(exc, BadRequestBody):
        return Response.error(400)
    if isinstance(exc, ConnectionResetError):
        return Response.error(400)
    log.error(
        "handler failed for %s %s", request.method, request.uri, exc_info=(type(exc), exc, None)
    )
    return _server_error()


def response_fields(status: int, headers: Headers, length: int | None) -> list[tuple[bytes, bytes]]:
    """The response's HEADERS: `:status`, the handler's fields (lower-case, without the
    connection-specific ones), Server and Date unless set, Content-Length when known."""
    out = [(b":status", str(status).encode())]
    has_server = has_date = has_length = False
    for name, value in headers:
        low = name.lower()
        if low in _HOP:
            continue
        if low == "server":
            has_server = True
            if not value:
                continue
        elif low == "date":
            has_date = True
        elif low == "content-length":
            has_length = True
        if _BAD.search(value) or _BAD_NAME.search(low) or not low:
            raise ValueError("CR, LF or NUL inside a response header")
        out.append(
            (low.encode("latin-1", "replace"), value.strip(" \t").encode("latin-1", "replace"))
        )
    if not has_server:
        out.append((b"server", b"meshkit"))
    if not has_date:
        out.append((b"date", http1.http_date().encode()))
    if length is not None and not has_length and http1.length_header_allowed(status):
        out.append((b"content-length", str(length).encode()))
    return out
