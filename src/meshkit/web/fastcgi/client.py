"""Talking to FastCGI responders (php-fpm): pooled keep-conn connections over TCP or unix.

One request at a time per connection (php-fpm does not multiplex), request id 1 always.
A connection that ended its request cleanly goes back to its upstream's idle list (newest
first) and is reused; one the responder closed leaves the list as soon as the close is seen,
and a request that finds its reused connection closed before any reply byte is sent again on
a fresh one (that is what makes php-fpm restarts invisible, unlike Caddy v1 #1123 / #1166).

Kept connections pin php-fpm children (a child serves one connection until it closes), so
with more requests in flight than php-fpm has children, a freshly dialled connection can
wait in php-fpm's listen queue while every child idles on a kept one. To never deadlock
like that, a finished connection is closed instead of kept when a request on a freshly
dialled connection has waited for its first reply byte while more exchanges completed on
other connections than the upstream has open (a free child would have taken it by then).
A burst that ends leaves no later exchange to notice that, so a connection kept while some
new one still waits for its first byte is closed too when that is still so a moment later
(STARVE_CHECK). The upstream then learns a cap (the connections that were being served),
and later requests wait for a kept connection instead of dialling past it; the cap is
probed one higher now and then, and forgotten when every connection is gone (a restarted
php-fpm may have more children).

The request goes out as one write when it has no body (BEGIN_REQUEST, PARAMS, empty STDIN);
a body is streamed from request.body as STDIN records. A reply that is complete in the
first read (the usual small PHP page) comes back as bytes; a longer one is streamed: its
body is an async iterator fed by the connection, which stops reading from php-fpm while the
client is slower than the script.

Errors are FastCGIError with the HTTP status to answer: 502 when the responder cannot be
reached or breaks the protocol, 504 when it does not answer within read_timeout.

Two ways in, one exchange: `Client.request()` (a coroutine: dials, waits for a kept
connection, streams request bodies, retries a stale connection) and `Client.start()`, which
sends a request without a body synchronously on a kept connection and calls back from the
connection's data_received once the reply head (or the whole small reply) is in, so that the
handler can answer through a plain Future with no task per request. Both turn what came back
into a Reply with the same `_reply()`. Read timeouts are deadlines checked by one sweep per
client (meshkit.web.proxy.deadlines), not a timer per wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from meshkit.lb import ConnTable
from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.response import Head, HeadError, parse_head
from meshkit.web.message import Body, Headers
from meshkit.web.proxy.deadlines import Deadlines

log = logging.getLogger("meshkit.web")

REQUEST_ID = 1
STDIN_CHUNK = 65535  # one full record per body piece
HIGH_WATER = 256 * 1024  # bytes of STDOUT queued for a slow client before we stop reading
LOW_WATER = 64 * 1024
MAX_IDLE = 256  # kept connections per upstream
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux
STARVE_CHECK = 0.05  # seconds
PROBE_EVERY = 1024  # exchanges between tries of one more connection than the learnt cap


class FastCGIError(Exception):
    """A FastCGI exchange failed; `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, message: str, connect_failed: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.connect_failed = connect_failed  # nothing was sent: another upstream may serve


class _Retry(Exception):
    """A reused connection turned out closed before it answered: send again on a new one."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a FastCGI responder listens: `host:port` / `[v6]:port` or `unix:/path`."""

    text: str  # as written, for messages and logs
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket

    @property
    def is_unix(self) -> bool:
        return bool(self.path)


def parse_endpoint(text: str) -> Endpoint:
    """An Endpoint from `host:port`, `[v6]:port`, `unix:/path` (or `fastcgi://host:port`);
    ValueError with the reason otherwise."""
    raw = text
    if raw.startswith("fastcgi://"):
        raw = raw[len("fastcgi://") :]
    if raw.startswith("unix:"):
        path = raw[5:]
        if not path:
            raise ValueError(f"endpoint {text!r}: unix: needs a socket path")
        return Endpoint(text, path=path)
    if raw.startswith("/"):
        return Endpoint(text, path=raw)
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"endpoint {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"endpoint {text!r}: expected HOST:PORT or unix:/path")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"endpoint {text!r}: invalid port {port_text!r}")
    return Endpoint(text, host=host, port=int(port_text))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 60.0
    read: float = 60.0
    send: float = 60.0


class Upstream:
    """One responder and its idle connections."""

    __slots__ = (
        "cap",
        "completed",
        "deadlines",
        "dialling",
        "endpoint",
        "fresh",
        "idle",
        "open",
        "timer",
        "waiters",
    )

    def __init__(self, endpoint: Endpoint, deadlines: Deadlines | None = None) -> None:
        self.endpoint = endpoint
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.idle: list[_Conn] = []
        self.open = 0  # connections dialled and not yet closed
        self.dialling = 0
        self.completed = 0  # exchanges ended cleanly
        # connections whose first request awaits its first reply byte -> `completed` when
        # that request was sent
        self.fresh: dict[_Conn, int] = {}
        self.cap = 0  # connections the responder serves at once, once learnt (0: unknown)
        # requests waiting for a kept connection (None: dial, there is room again)
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check soon whether kept connections hold back a new one (see the module doc)."""
        if self.timer is None:
            self.timer = loop.call_later(STARVE_CHECK, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.fresh and self.idle:
            # idle connections pin responder children while a new connection still has
            # no reply: free the children
            for conn in list(self.idle):
                conn.close()

    def full(self) -> bool:
        return bool(self.cap) and self.open + self.dialling >= self.cap

    def hand_over(self, conn: _Conn | None) -> bool:
        """Give a kept connection (or leave to dial) to the first waiting request."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def starving(self) -> bool:
        """Does a request on a new connection look stuck in the responder's listen queue?"""
        if not self.fresh:
            return False
        return self.completed - min(self.fresh.values()) > self.open

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class _Conn(asyncio.Protocol):
    """One connection to a responder and the state of the exchange running on it."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
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
        self.on_ready: Callable[[_Conn], None] | None = None
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
            self._not_fresh()
        if self.head is None and not self.buf and not self.decoder.pending:
            whole = records.whole_reply(data)
            if whole is not None and self._take_whole(*whole):
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

    def _take_whole(self, stdout: bytes, end: records.EndRequest) -> bool:
        """A whole reply in one read (records.whole_reply); False leaves it to the Decoder
        (a head that is not whole or not valid: the general path reports it)."""
        try:
            head = parse_head(stdout)
        except HeadError:
            return False
        if head is None:
            return False
        self.head = head
        rest = stdout[head.body_start :]
        if rest:
            self.chunks.append(rest)
            self.queued = len(rest)
        self.end = end
        self.ended = True
        self._notify()
        return True

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
        """The exchange is over: keep the connection for the next request, or close it."""
        up = self.upstream
        if self.ended and self.error is None:
            up.completed += 1
        if up.starving():
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

    def __init__(self, conn: _Conn, timeout: float, content_length: int | None = None) -> None:
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


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes | StreamBody


class Client:
    """Sends requests to one or more FastCGI upstreams, round robin."""

    def __init__(self, endpoints: list[Endpoint], timeouts: Timeouts | None = None) -> None:
        if not endpoints:
            raise ValueError("a FastCGI client needs at least one endpoint")
        self.deadlines = Deadlines()
        self.upstreams = [Upstream(e, self.deadlines) for e in endpoints]
        self.timeouts = timeouts or Timeouts()
        self._table = None
        self._seq = 0
        if len(self.upstreams) > 1:
            # the shared load-balancing table picks (smooth weighted round robin, equal
            # weights); each pick is a flow released at once, since connections are pooled
            self._table = ConnTable("round_robin")
            for i in range(len(self.upstreams)):
                self._table.add_backend(i)

    def _order(self) -> list[Upstream]:
        ups = self.upstreams
        table = self._table
        if table is None:
            return ups
        self._seq = seq = (self._seq + 1) & 0xFFFF
        first = table.lookup(6, "127.0.0.1", seq, "127.0.0.1", 1, 0.0)
        table.release(6, "127.0.0.1", seq, "127.0.0.1", 1)
        if first is None:
            return ups
        # the pick first, then the others in turn: a refused connection fails over
        return ups[first:] + ups[:first]

    def close(self) -> None:
        for up in self.upstreams:
            up.close()
        self.deadlines.close()

    async def _dial(self, up: Upstream) -> _Conn:
        loop = asyncio.get_running_loop()
        ep = up.endpoint
        conn = _Conn(up, loop)
        timeout = self.timeouts.connect
        try:
            if ep.is_unix:
                coro = loop.create_unix_connection(lambda: conn, ep.path)
            else:
                coro = loop.create_connection(lambda: conn, ep.host, ep.port)
            await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:  # not yet the builtin one on 3.10
            raise FastCGIError(
                502, f"FastCGI connect to {ep.text} timed out after {timeout:g}s", True
            ) from None
        except OSError as e:
            raise FastCGIError(
                502, f"cannot connect to FastCGI {ep.text}: {e.strerror or e}", True
            ) from None
        if not ep.is_unix:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                conn.sock = sock
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def request(
        self,
        params: bytes,
        body: Body | None,
        stdin: bytes | None = None,
        head_only: bool = False,
        order: list[Upstream] | None = None,
    ) -> Reply:
        """Send one request (`params` from records.encode_pairs) and wait for its head.

        The request body is `stdin` when given (already read), else streamed from `body`
        (None: no body). `head_only` (a HEAD request) keeps the script's Content-Length on
        the empty body. `order` is the upstreams to try (default: the next in turn first)."""
        last: FastCGIError | None = None
        for up in order or self._order():
            try:
                return await self._on_upstream(up, params, body, stdin, head_only)
            except FastCGIError as e:
                log.error("%s", e.message)
                if not e.connect_failed:
                    raise
                last = e
        assert last is not None
        raise last

    async def _on_upstream(
        self,
        up: Upstream,
        params: bytes,
        body: Body | None,
        stdin: bytes | None,
        head_only: bool,
    ) -> Reply:
        while True:
            conn: _Conn | None = None
            if not up.idle and up.full():
                conn = await self._wait_for_conn(up)
            reused = conn is not None or bool(up.idle)
            if conn is None:
                if up.idle:
                    conn = up.idle.pop()
                else:
                    up.dialling += 1
                    try:
                        conn = await self._dial(up)
                    finally:
                        up.dialling -= 1
            try:
                return await self._exchange(conn, params, body, stdin, reused, head_only)
            except _Retry:
                continue

    async def _wait_for_conn(self, up: Upstream) -> _Conn | None:
        """A kept connection handed over by a finished request, or None: dial."""
        fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        up.waiters.append(fut)
        try:
            # past the connect timeout, dial anyway: a slow pool must not turn into errors
            return await asyncio.wait_for(fut, self.timeouts.connect)
        except asyncio.TimeoutError:  # not yet the builtin one on 3.10
            return None
        except BaseException:
            if fut.done() and not fut.cancelled():
                handed = fut.result()
                if handed is not None:
                    handed.close()
            raise

    async def _exchange(
        self,
        conn: _Conn,
        params: bytes,
        body: Body | None,
        stdin: bytes | None,
        reused: bool,
        head_only: bool,
    ) -> Reply:
        up = conn.upstream
        timeouts = self.timeouts
        if not conn.served and not conn.got_data:
            up.fresh[conn] = up.completed
        streamed = False
        try:
            if conn.closed:
                if reused:
                    raise _Retry
                raise conn.error or FastCGIError(
                    502, f"FastCGI connection to {up.endpoint.text} closed at once"
                )
            if stdin is not None or body is None:
                conn.send(records.encode_request(REQUEST_ID, params, stdin or b""))
            else:
                conn.send(records.encode_request(REQUEST_ID, params, None))
                streamed = True
                await self._send_body(conn, body)
            while conn.head is None and not conn.ended and conn.error is None:
                await conn.wait(timeouts.read)
            if conn.error is not None:
                if _stale(conn, reused) and not streamed:
                    raise _Retry
                raise conn.error
        except BaseException:
            conn.close()
            raise
        return self._reply(conn, head_only)

    def _reply(self, conn: _Conn, head_only: bool) -> Reply:
        """The Reply of an exchange whose head (or end) is in, without error: a bytes body
        when the reply has ended (the connection is kept), else a stream."""
        up = conn.upstream
        end = conn.end
        if end is not None and end.protocol_status != records.REQUEST_COMPLETE:
            text = records.PROTOCOL_STATUS_TEXT.get(end.protocol_status, str(end.protocol_status))
            conn.close()
            raise FastCGIError(502, f"FastCGI {up.endpoint.text} refused the request: {text}")
        head = conn.head
        if head is None:
            conn.close()
            raise FastCGIError(
                502, f"FastCGI {up.endpoint.text} ended the request without a response head"
            )
        headers = head.headers
        if conn.ended:
            chunks = conn.chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            conn.release()
            declared = head.content_length
            if declared is not None and declared != len(data) and not (head_only and not data):
                # never promise bytes that are not there: the server counts them itself
                headers.remove("Content-Length")
            return Reply(head.status, headers, data)
        return Reply(
            head.status, headers, StreamBody(conn, self.timeouts.read, head.content_length)
        )

    def start(
        self, params: bytes, head_only: bool, done: Callable[[Reply | FastCGIError], None]
    ) -> None:
        """Send a request without a body; `done` gets the Reply (or the FastCGIError, logged).

        With a kept connection idle, the request is written at once and `done` is called
        from the connection's callbacks (no task); a kept connection found closed is retried
        on a fresh one, and without an idle connection the request goes through request()."""
        order = self._order()
        up = order[0]
        idle = up.idle
        conn = None
        while idle:
            conn = idle.pop()
            if not conn.closed:
                break
            conn = None
        ready = _Ready(self, params, head_only, done)
        if conn is None:
            ready.fall_back(order)
            return
        conn.on_ready = ready
        up.deadlines.watch(conn, self.timeouts.read)
        conn.send(records.encode_request(REQUEST_ID, params, b""))

    async def _send_body(self, conn: _Conn, body: Body) -> None:
        send_timeout = self.timeouts.send
        while True:
            chunk = await body.read(STDIN_CHUNK)
            if conn.closed:
                break
            if not chunk:
                conn.send(records.encode_record(records.STDIN, REQUEST_ID, b""))
                break
            conn.send(records.encode_record(records.STDIN, REQUEST_ID, chunk))
            await conn.drained(send_timeout)


def _stale(conn: _Conn, reused: bool) -> bool:
    """A failed exchange on a kept connection the responder had closed before it read the
    request (nothing came back, and not a timeout): worth sending again on a new one."""
    error = conn.error
    return reused and not conn.got_data and (error is None or error.status != 504)


class _Ready:
    """What Client.start() does once its connection has the reply head or failed."""

    __slots__ = ("client", "done", "head_only", "params")

    def __init__(
        self,
        client: Client,
        params: bytes,
        head_only: bool,
        done: Callable[[Reply | FastCGIError], None],
    ) -> None:
        self.client = client
        self.params = params
        self.head_only = head_only
        self.done = done

    def __call__(self, conn: _Conn) -> None:
        error = conn.error
        if error is not None:
            conn.close()
            if _stale(conn, True):
                self.fall_back()
                return
            log.error("%s", error.message)
            self.done(error)
            return
        try:
            reply = self.client._reply(conn, self.head_only)
        except FastCGIError as e:
            log.error("%s", e.message)
            self.done(e)
            return
        self.done(reply)

    def fall_back(self, order: list[Upstream] | None = None) -> None:
        """Run the request through Client.request() (dialling, retrying) in a task."""
        client = self.client
        task = asyncio.get_running_loop().create_task(
            client.request(self.params, None, b"", self.head_only, order)
        )
        task.add_done_callback(self._retried)

    def _retried(self, task: asyncio.Task[Reply]) -> None:
        if task.cancelled():
            self.done(FastCGIError(502, "FastCGI request cancelled"))
            return
        exc = task.exception()
        if isinstance(exc, FastCGIError):
            self.done(exc)  # request() logged it
        elif exc is not None:
            log.error("FastCGI request failed: %r", exc)
            self.done(FastCGIError(502, f"FastCGI request failed: {exc!r}"))
        else:
            self.done(task.result())


async def collect(body: bytes | AsyncIterator[bytes]) -> bytes:
    """The whole of a reply body (for tests and tools)."""
    if isinstance(body, bytes):
        return body
    return b"".join([c async for c in body])
