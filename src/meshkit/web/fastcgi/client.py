"""Talking to FastCGI responders (php-fpm): pooled keep-conn connections over TCP or unix.

The parts: where a responder listens (endpoint.py), one responder's kept connections and
the cap it learns so that kept connections never starve a new one (pool.py), one connection
and the exchange on it (connection.py), and here the client that picks an upstream, dials,
sends and retries. A request that finds its reused connection closed before any reply byte
is sent again on a fresh one (that is what makes php-fpm restarts invisible, unlike Caddy v1
#1123 / #1166).

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from meshkit.lb import ConnTable
from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.connection import REQUEST_ID, Connection, FastCGIError, StreamBody
from meshkit.web.fastcgi.endpoint import Endpoint, Timeouts, parse_endpoint
from meshkit.web.fastcgi.fast import QuickReply, encode_request
from meshkit.web.fastcgi.pool import Upstream
from meshkit.web.message import Body, Headers
from meshkit.web.proxy.deadlines import Deadlines

__all__ = [
    "Client",
    "Endpoint",
    "FastCGIError",
    "Reply",
    "StreamBody",
    "Timeouts",
    "collect",
    "parse_endpoint",
]

log = logging.getLogger(__name__)

STDIN_CHUNK = 65535  # one full record per body piece


class _Retry(Exception):
    """A reused connection turned out closed before it answered: send again on a new one."""


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
        self.upstreams: list[Upstream[Connection]] = [
            Upstream(e, self.deadlines) for e in endpoints
        ]
        self.timeouts = timeouts or Timeouts()
        self._table = None
        self._seq = 0
        if len(self.upstreams) > 1:
            # the shared load-balancing table picks (smooth weighted round robin, equal
            # weights); each pick is a flow released at once, since connections are pooled
            self._table = ConnTable("round_robin")
            for i in range(len(self.upstreams)):
                self._table.add_backend(i)

    def _order(self) -> list[Upstream[Connection]]:
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

    async def _dial(self, up: Upstream[Connection]) -> Connection:
        loop = asyncio.get_running_loop()
        ep = up.endpoint
        conn = Connection(up, loop)
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
        order: list[Upstream[Connection]] | None = None,
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
        up: Upstream[Connection],
        params: bytes,
        body: Body | None,
        stdin: bytes | None,
        head_only: bool,
    ) -> Reply:
        while True:
            conn: Connection | None = None
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

    async def _wait_for_conn(self, up: Upstream[Connection]) -> Connection | None:
        """A kept connection handed over by a finished request, or None: dial."""
        fut: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
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
        conn: Connection,
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
                conn.send(encode_request(REQUEST_ID, params, stdin or b""))
            else:
                conn.send(encode_request(REQUEST_ID, params, None))
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

    def _reply(self, conn: Connection, head_only: bool) -> Reply:
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
        order = self.upstreams if self._table is None else self._order()
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
        conn.send(encode_request(REQUEST_ID, params, b""))

    async def _send_body(self, conn: Connection, body: Body) -> None:
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


def _stale(conn: Connection, reused: bool) -> bool:
    """A failed exchange on a kept connection the responder had closed before it read the
    request (nothing came back, and not a timeout): worth sending again on a new one."""
    error = conn.error
    return reused and not conn.got_data and (error is None or error.status != 504)


class _Ready:
    """What Client.start() does once its connection has the reply head or failed."""

    __slots__ = ("client", "done", "head_only", "params", "stdin")

    def __init__(
        self,
        client: Client,
        params: bytes,
        head_only: bool,
        done: Callable[[Reply | FastCGIError], None],
        stdin: bytes = b"",
    ) -> None:
        self.client = client
        self.params = params
        self.head_only = head_only
        self.done = done
        self.stdin = stdin  # the request body (the FastCGI lane's small bodies), sent again

    def __call__(self, conn: Connection) -> None:
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

    def whole(self, conn: Connection, quick: QuickReply) -> None:
        """A reply that came whole in one read and ended cleanly: _reply() without a Head."""
        status, items, length, body = quick[0], quick[1], quick[2], quick[3]
        headers = Headers(items)
        conn.release()
        if length is not None and length != len(body) and not (self.head_only and not body):
            # never promise bytes that are not there: the server counts them itself
            headers.remove("Content-Length")
        self.done(Reply(status, headers, body))

    def fall_back(self, order: list[Upstream[Connection]] | None = None) -> None:
        """Run the request through Client.request() (dialling, retrying) in a task."""
        client = self.client
        task = asyncio.get_running_loop().create_task(
            client.request(self.params, None, self.stdin, self.head_only, order)
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
