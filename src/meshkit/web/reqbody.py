"""The request body as the server's parser delivers it, and the errors a body read raises.

RequestBody is the server's implementation of meshkit.web.message.Body: the parser feeds it,
a handler reads it (sending `100 Continue` on the first read when asked for), and the
connection discards what nobody read after the response. BadRequestBody is the failure of a
body the parser found malformed after its request was dispatched: handlers that turn body
errors into responses answer its `status` (400).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from meshkit.web.http1 import Framing
from meshkit.web.message import BodyTooLarge, Request

__all__ = ["BODY_BUFFER", "BadRequestBody", "BodyOwner", "RequestBody"]

BODY_BUFFER = 262144  # buffered, unread request body bytes before reading pauses


class BadRequestBody(ConnectionResetError):
    """The request body is malformed (a bad chunk, a forbidden trailer): answer `status`.

    A ConnectionResetError, so that handlers that treat a vanished client as the end of the
    exchange keep doing so; those that answer body errors read `status`."""

    status = 400

    def __init__(self, message: str = "malformed request body") -> None:
        super().__init__(message)


class BodyOwner(Protocol):
    """What a RequestBody needs from its connection."""

    _loop: asyncio.AbstractEventLoop

    def _max_discard(self) -> int: ...

    def _send_continue(self, body: RequestBody) -> None: ...

    def _body_waiting(self, body: RequestBody, waiting: bool) -> None: ...

    def _update_reading(self) -> None: ...

    def _close_when_done(self) -> None: ...


class RequestBody:
    """The request body as the parser delivers it (the server's Body implementation)."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_continue_sent",
        "_delivered",
        "_discard",
        "_discarded",
        "_error",
        "_framing",
        "_read_any",
        "_received",
        "_waiter",
        "buffered",
        "limit",
        "request",
    )

    def __init__(self, conn: BodyOwner, framing: Framing) -> None:
        self._conn = conn
        self._framing = framing
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._received = 0
        self._delivered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._read_any = False
        self._discard = False
        self._discarded = 0
        self.request: Request | None = None  # the request this is the body of
        self.limit: int | None = None

    @property
    def length(self) -> int | None:
        """Content-Length, or None for a chunked body."""
        return self._framing.length

    # -- the handler side

    async def read(self, max_bytes: int = 65536) -> bytes:
        """The next piece of the body (at most max_bytes); b"" at its end."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        limit = self.limit
        length = self._framing.length
        if limit is not None and length is not None and length > limit:
            raise BodyTooLarge(limit)
        if not self._read_any:
            self._read_any = True
            if self._framing.expect_continue and not self._continue_sent:
                self._continue_sent = True
                self._conn._send_continue(self)
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            if self._discard:
                raise RuntimeError("the request body was discarded after the response")
            waiter = self._conn._loop.create_future()
            self._waiter = waiter
            self._conn._body_waiting(self, True)
            try:
                await waiter
            finally:
                self._waiter = None
                self._conn._body_waiting(self, False)
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._delivered += len(chunk)
        if limit is not None and self._delivered > limit:
            # The limit was set after these bytes had arrived.
            self._error = BodyTooLarge(limit)
            raise self._error
        before = self.buffered
        self.buffered -= len(chunk)
        if before >= BODY_BUFFER > self.buffered:
            self._conn._update_reading()
        return chunk

    async def read_all(self) -> bytes:
        """The whole body (BodyTooLarge past `limit`)."""
        parts: list[bytes] = []
        while True:
            chunk = await self.read(BODY_BUFFER)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    # -- the parser side

    def feed(self, data: bytes) -> None:
        self._received += len(data)
        if self._discard:
            self._discarded += len(data)
            if self._discarded > self._conn._max_discard():
                self._conn._close_when_done()
            return
        limit = self.limit
        if limit is not None and self._received > limit:
            self._error = BodyTooLarge(limit)
            self._chunks.clear()
            self.buffered = 0
            self._discard = True  # nothing more is kept; the 413 closes the connection
            self._wake()
            return
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= BODY_BUFFER:
            self._conn._update_reading()
        self._wake()

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_discarding(self) -> bool:
        """Drop what is buffered and what still comes; False when that would be too much."""
        if self._framing.expect_continue and not self._continue_sent:
            return False  # the client may or may not send the body now: do not guess
        if self._error is not None and isinstance(self._error, BodyTooLarge):
            return False
        length = self._framing.length
        if length is not None and length - self._received > self._conn._max_discard():
            return False
        self._discard = True
        self._chunks.clear()
        self.buffered = 0
        return True
