"""One connection to a FastCGI responder (an asyncio.Protocol) and the exchange running
on it, plus the streamed body of a longer reply.

One request at a time per connection (php-fpm does not multiplex), request id 1 always.
A connection that ended its request cleanly goes back to its upstream's idle list (newest
first, meshkit.web.fastcgi.pool) and is reused; one the responder closed leaves the list as
soon as the close is seen. A reply that is complete in the first read (the usual small PHP
page) is taken whole; a longer one is streamed through StreamBody, and the connection stops
reading from php-fpm while the client is slower than the script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Any, Protocol, cast

from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.fast import QuickReply, quick_reply
from meshkit.web.fastcgi.pool import MAX_IDLE, PROBE_EVERY, Upstream
from meshkit.web.fastcgi.response import Head, HeadError, parse_head
from meshkit.web.message import Headers

log = logging.getLogger(__name__)

REQUEST_ID = 1
HIGH_WATER = 256 * 1024  # bytes of STDOUT queued for a slow client before we stop reading
LOW_WATER = 64 * 1024
_new_tuple = tuple.__new__  # a NamedTuple without its Python __new__
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux


class FastCGIError(Exception):
    """A FastCGI exchange failed; `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, message: str, connect_failed: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.connect_failed = connect_failed  # nothing was sent: another upstream may serve


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Ready(Protocol):
    """What Client.start() waits with (client._Ready): called with the connection once the
    reply head (or the end, or an error) is in; `whole` takes a reply that came whole in one
    read, its head parsed (fast.quick_reply), without the Head and EndRequest objects."""

    def __call__(self, conn: Connection) -> None: ...

    def whole(self, conn: Connection, quick: QuickReply) -> None: ...


class Connection(asyncio.Protocol):
    """One connection to a responder and the state of the exchange running on it."""

    def __init__(self, upstream: Upstream[Connection], loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = records.Decoder()
        self.closed = False
        self.served = 0  # exchanges that ended cleanly on this connection
        self._reset()
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.sock: Any = None  # the TCP socket (None for unix sockets)
        self.deadline = 0.0
        self.timeout = 0.0
        # the FastCGI lane's stand-in protocol on this transport (_fcgilane.pxi _FLFront)
        self.front: Any = None

    def _reset(self) -> None:
        self.buf = b""  # STDOUT before the end of the head
        self.head: Head | None = None
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.ended = False
        self.end: records.EndRequest | None = None
        self.error: FastCGIError | None = None
        self.got_data = False
        self.waiter: asyncio.Future[None] | None = None
        # the synchronous exchange waiting for its reply head (Client.start)
        self.on_ready: Ready | None = None
        self.read_paused = False
        self.stderr: list[bytes] = []

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look like one
        self.transport = cast(asyncio.Transport, transport)
        self.upstream.open += 1

    def data_received(self, data: bytes) -> None:
        if not self.got_data:
            self.got_data = True
            self.upstream.fresh.pop(self, None)  # _not_fresh(), inline: once per request
        if self.head is None and not self.buf and not self.decoder.pending:
            quick = quick_reply(data)
            if quick is not None:
                self._take_quick(quick)
                return
        try:
            recs = self.decoder.feed(data)
        except records.ProtocolError as e:
            self._fail(FastCGIError(502, f"FastCGI protocol error from {self._name()}: {e}"))
            return
        for rec in recs:
            rtype = rec[0]
            if rtype == records.STDOUT:
                content = rec[2]
                if content:
                    if self.head is None:
                        self.buf = self.buf + content if self.buf else content
                    else:
                        self.chunks.append(content)
                        self.queued += len(content)
            elif rtype == records.STDERR:
                if rec.content:
                    self.stderr.append(rec.content)
            elif rtype == records.END_REQUEST:
                try:
                    self.end = records.parse_end_request(rec.content)
                except records.ProtocolError as e:
                    self._fail(
                        FastCGIError(502, f"FastCGI protocol error from {self._name()}: {e}")
                    )
                    return
                self.ended = True
                if rec.request_id != REQUEST_ID or self.decoder.pending:
                    self._fail(
                        FastCGIError(
                            502,
                            f"FastCGI protocol error from {self._name()}: "
                            "unexpected bytes after END_REQUEST",
                        )
                    )
                    return
            # other record types (UNKNOWN_TYPE, GET_VALUES_RESULT) carry nothing for us
        if self.stderr:
            self._log_stderr()
        if self.head is None and self.buf:
            try:
                head = parse_head(self.buf)
            except HeadError as e:
                self._fail(FastCGIError(502, f"bad response head from {self._name()}: {e}"))
                return
            if head is not None:
                self.head = head
                rest = self.buf[head.body_start :]
                self.buf = b""
                if rest:
                    self.chunks.append(rest)
                    self.queued += len(rest)
        if not self.ended and self.sock is not None:
            # php-fpm writes a longer reply in pieces without TCP_NODELAY: with our ACK
            # delayed, Nagle holds its next piece back for the delayed-ACK timer (~40 ms)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if self.head is not None or self.ended:
            self._notify()
            if self.queued > HIGH_WATER and not self.read_paused and not self.ended:
                self.read_paused = True
                assert self.transport is not None
                self.transport.pause_reading()

    def _take_quick(self, quick: QuickReply) -> None:
        """A whole reply in one read, its head parsed (meshkit.web.fastcgi.fast.quick_reply;
        anything it declines goes through the Decoder, which reports what is wrong)."""
        ready = self.on_ready
        if ready is not None and quick[5] == records.REQUEST_COMPLETE:
            self.on_ready = None
            self.upstream.deadlines.watched.discard(self)
            self.ended = True
            ready.whole(self, quick)
            return
        status, items, length, body, app, proto = quick
        self.head = Head(status, Headers(items), 0, length)
        if body:
            self.chunks.append(body)
            self.queued = len(body)
        self.end = _new_tuple(records.EndRequest, (app, proto))
        self.ended = True
        self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        if not self.ended and self.error is None:
            self.error = FastCGIError(
                502, f"FastCGI connection to {self._name()} closed before the response ended"
            )
        self._notify()
        _wake(self.drain)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        _wake(self.drain)

    # --- helpers ------------------------------------------------------------------------------
    def _name(self) -> str:
        return self.upstream.endpoint.text

    def _not_fresh(self) -> None:
        self.upstream.fresh.pop(self, None)

    def _fail(self, error: FastCGIError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._notify()

    def _notify(self) -> None:
        """Something new arrived (head, body, end) or the exchange failed."""
        ready = self.on_ready
        if ready is None:
            _wake(self.waiter)
        elif self.head is not None or self.ended or self.error is not None:
            self.on_ready = None
            self.upstream.deadlines.watched.discard(self)
            ready(self)

    def time_out(self) -> None:
        """No reply within the read timeout (the Deadlines sweep): 504."""
        self._fail(
            FastCGIError(504, f"FastCGI read from {self._name()} timed out after {self.timeout:g}s")
        )

    def _log_stderr(self) -> None:
        text = b"".join(self.stderr).decode("utf-8", "replace").strip()
        self.stderr = []
        for line in text.splitlines():
            if line.strip():
                log.error("fastcgi %s stderr: %s", self._name(), line)

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        up = self.upstream
        up.fresh.pop(self, None)
        if self.transport is not None:
            up.open -= 1
            if up.open == 0 and not up.dialling:
                up.cap = 0
        with contextlib.suppress(ValueError):
            up.idle.remove(self)
        if up.waiters and not up.full():
            up.hand_over(None)

    def close(self) -> None:
        if not self.closed:
            self._gone()
            if self.transport is not None:
                self.transport.abort()

    def release(self) -> None:
        """The exchange is over: keep the connection for the next request, or close it.

        The FastCGI lane (_fcgilane.pxi, _fl_release) runs the kept path below inline for a
        reply that ended cleanly: change both together."""
        up = self.upstream
        if self.ended and self.error is None:
            up.completed += 1
        if up.fresh and up.starving():
            # the connections being served now are what the responder can take at once
            up.cap = max(1, up.open - len(up.fresh))
            self.close()
            return
        if (
            self.closed
            or not self.ended
            or self.error is not None
            or self.read_paused
            or len(up.idle) >= MAX_IDLE
        ):
            self.close()
            return
        self.served += 1
        self._reset()
        if up.waiters:
            if up.cap and not up.completed % PROBE_EVERY:
                up.cap += 1  # the responder may have grown (or the cap was learnt low)
            if up.hand_over(self):
                return
        up.idle.append(self)
        if up.fresh:
            up.watch(self.loop)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drained(self, timeout: float) -> None:
        if not self.write_paused or self.closed:
            return
        self.drain = self.loop.create_future()
        try:
            await asyncio.wait_for(self.drain, timeout)
        except asyncio.TimeoutError:  # not yet the builtin one on 3.10
            raise FastCGIError(
                504, f"FastCGI send to {self._name()} timed out after {timeout:g}s"
            ) from None
        finally:
            self.drain = None

    async def wait(self, timeout: float) -> None:
        """Until something new arrived (head, body, end) or the exchange failed (a 504
        FastCGIError in self.error after `timeout` seconds without anything)."""
        fut = self.loop.create_future()
        self.waiter = fut
        deadlines = self.upstream.deadlines
        deadlines.watch(self, timeout)
        try:
            await fut
        finally:
            deadlines.unwatch(self)
            self.waiter = None

    def resume_reading(self) -> None:
        if self.read_paused and self.queued <= LOW_WATER and not self.closed:
            self.read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()


class StreamBody:
    """The body of a streamed FastCGI reply, as an async iterator the server writes out."""

    __slots__ = ("_conn", "_done", "_timeout", "content_length")

    def __init__(self, conn: Connection, timeout: float, content_length: int | None = None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._done = False
        # the script's own Content-Length: the server sends the stream plain under it (and
        # closes the connection should the script send more or less), not chunked
        self.content_length = content_length

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while True:
            if conn.chunks:
                parts = list(conn.chunks)
                conn.chunks.clear()
                conn.queued = 0
                conn.resume_reading()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if conn.error is not None:
                self._finish(False)
                log.error("%s", conn.error.message)
                raise conn.error
            if conn.ended:
                self._finish(True)
                raise StopAsyncIteration
            if self._done:
                raise StopAsyncIteration
            await conn.wait(self._timeout)

    def _finish(self, ok: bool) -> None:
        if self._done:
            return
        self._done = True
        if ok:
            self._conn.release()
        else:
            self._conn.close()

    async def aclose(self) -> None:
        """The client went away: drop the connection (php-fpm may still be writing)."""
        self.close()

    def close(self) -> None:
        """aclose() without awaiting: keep the connection only if the reply had ended."""
        self._finish(self._conn.ended and not self._conn.chunks and self._conn.error is None)
