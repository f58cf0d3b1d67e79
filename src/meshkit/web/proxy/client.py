"""The proxy's HTTP/1.1 client: a keep-alive pool per upstream and one request/response exchange.

Each upstream connection is a uvloop protocol feeding httptools' C response parser. The hot
case (a small response whose whole body arrives with its head) costs one write of the request
head, one parse, and a bytes body handed back with the connection already back in the pool;
anything longer is streamed as an async iterator, with reading paused while the client is slow.
Request bodies stream upstream as they arrive (chunked when the client sent them chunked).

A response to an Upgrade request that says 101 keeps its connection out of the pool: the
caller relays it (meshkit.web.proxy.tunnel).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable

import httptools

from meshkit.web.message import Body
from meshkit.web.proxy.upstream import Upstream

__all__ = [
    "ConnectFailed",
    "Pool",
    "Reply",
    "Stream",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamTimeout",
    "exchange",
]

_READ_HIGH = 1 << 20  # buffered response bytes before reading from the upstream pauses
_SEND_PIECE = 65536


class UpstreamError(Exception):
    """The exchange with an upstream failed (the message is for the log, never the client)."""


class ConnectFailed(UpstreamError):
    """The upstream could not be reached: nothing was sent, another one may be tried."""


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than `timeout` (504)."""


class UpstreamBroken(UpstreamError):
    """The upstream closed or spoke bad HTTP mid-exchange (502)."""


class _Conn(asyncio.Protocol):
    """One connection to an upstream and the response being read on it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.body_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.head_done = False
        self.done = False
        self.head_only = False
        self.interim = False
        self.keep = True
        self.closed = False
        self.got_bytes = False
        self.read_paused = False
        self.write_paused = False
        self.upgrade_rest: bytes | None = None
        self.error: UpstreamError | None = None
        self.framed = True  # the body has a length or is chunked (else it ends at close)

    def begin(self, head_only: bool) -> None:
        self.status = 0
        self.headers = []
        self.body = []
        self.buffered = 0
        self.head_done = self.done = self.interim = False
        self.head_only = head_only
        self.got_bytes = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_rest = data[exc.args[0] :]
            self.done = True
        except httptools.HttpParserError as exc:
            if not self.done:
                self.error = UpstreamBroken(f"bad HTTP from the upstream: {exc}")
            self.keep = False
            self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep = False
        self.pool.forget(self)
        if self.head_done and not self.done and not self.framed:
            self.done = True  # a body delimited by the close of the connection
        elif not self.done and self.error is None:
            self.error = UpstreamBroken("the upstream closed the connection")
        self._wake()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: wait for the real response
            self.headers = []
            return
        self.status = status
        self.head_done = True
        self.keep = self.keep and bool(self.parser.should_keep_alive())
        self.framed = status == 101 or any(
            n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self.headers
        )
        if self.head_only or status == 204 or status == 304:
            self.framed = True
        if self.head_only:
            # httptools cannot be told a HEAD response has no body: end it here and do not
            # reuse the connection (the parser would wait for Content-Length bytes).
            self.done = True
            self.keep = False

    def on_body(self, data: bytes) -> None:
        if self.head_only:
            return
        self.body.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_HIGH and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True

    # -- helpers

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done() and (self.head_done or self.error is not None):
            w.set_result(None)
        w = self.body_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def take_body(self) -> bytes:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body = []
        self.buffered = 0
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    async def drained(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    def close(self) -> None:
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class Pool:
    """Connections to one upstream: up to `keepalive` idle ones kept for reuse (0: none)."""

    def __init__(
        self,
        upstream: Upstream,
        keepalive: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.idle: list[_Conn] = []

    async def acquire(self) -> tuple[_Conn, bool]:
        """A connection to send one request on, and whether it was reused."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        return await self.connect(), False

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            if up.scheme == "unix":
                coro = loop.create_unix_connection(lambda: _Conn(self), up.path)
            else:
                coro = loop.create_connection(
                    lambda: _Conn(self),
                    up.host,
                    up.port,
                    ssl=self.ssl_context if up.scheme == "https" else None,
                    server_hostname=up.host if up.scheme == "https" else None,
                )
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connecting to {up.name} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {up.name}: {exc}") from None
        return conn

    def put(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if not conn.keep or len(self.idle) >= self.keepalive:
            conn.close()
            return
        conn.waiter = conn.body_waiter = None
        self.idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Reply:
    """The upstream's response: head, and a bytes body or a stream of it."""

    __slots__ = ("body", "conn", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | Stream,
        conn: _Conn | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.conn = conn  # set for a 101: the connection to relay (not in the pool)


async def _send_body(conn: _Conn, body: Body, chunked: bool) -> None:
    transport = conn.transport
    assert transport is not None
    try:
        while True:
            data = await body.read(_SEND_PIECE)
            if not data:
                break
            if conn.closed:
                return
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
            if conn.write_paused:
                await conn.drained()
        if chunked and not conn.closed:
            transport.write(b"0\r\n\r\n")
    except Exception:
        # the client went away mid-body: the upstream must not take a short body as whole
        conn.close()


def _on_timeout(conn: _Conn, fut: asyncio.Future[None]) -> None:
    if not fut.done():
        conn.error = UpstreamTimeout(
            f"{conn.pool.upstream.name} did not answer within {conn.pool.connect_timeout:g}s"
        )
        conn.close()
        fut.set_result(None)


async def exchange(
    pool: Pool,
    head: bytes,
    body: Body | None,
    chunked: bool,
    head_only: bool,
    timeout: float,
    done: Callable[[bool], None],
) -> Reply:
    """Send one request (its head already serialized) and read the response head.

    `done(ok)` is called once the exchange is over: with the reply for a bytes body, after
    the last piece for a streamed one (ok False when it broke off). Raises ConnectFailed
    (nothing was sent), UpstreamTimeout or UpstreamBroken."""
    loop = asyncio.get_running_loop()
    conn, reused = await pool.acquire()
    while True:
        conn.begin(head_only)
        conn.error = None
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        sender = None
        if body is not None:
            sender = loop.create_task(_send_body(conn, body, chunked))
        fut = conn.waiter = loop.create_future()
        handle = loop.call_later(timeout, _on_timeout, conn, fut)
        try:
            if not (conn.head_done or conn.error is not None or conn.closed):
                await fut
        except BaseException:
            conn.close()
            raise
        finally:
            handle.cancel()
            conn.waiter = None
        if conn.head_done:
            break
        if sender is not None:
            sender.cancel()
        error = conn.error or UpstreamBroken("the upstream closed the connection")
        conn.close()
        if (
            reused
            and body is None
            and not conn.got_bytes
            and not isinstance(error, UpstreamTimeout)
        ):
            # an idle keep-alive connection the upstream had closed: try a fresh one once
            conn, reused = await pool.connect(), False
            continue
        raise error
    if conn.status == 101:
        done(True)
        return Reply(101, conn.headers, b"", conn)
    if conn.done:
        data = conn.take_body()
        if sender is None or sender.done():
            pool.put(conn)
        else:
            conn.close()  # answered before the whole request body was sent
        done(True)
        return Reply(conn.status, conn.headers, data, None)
    return Reply(conn.status, conn.headers, Stream(_stream(conn, sender, timeout, done)), None)


class Stream:
    """A streamed response body; `content_length` (set by the caller from the upstream's
    head) makes the server send it plain rather than chunked."""

    __slots__ = ("_gen", "content_length")

    def __init__(self, gen: AsyncGenerator[bytes, None]) -> None:
        self._gen = gen
        self.content_length: int | None = None

    def __aiter__(self) -> Stream:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()


async def _stream(
    conn: _Conn,
    sender: asyncio.Task[None] | None,
    timeout: float,
    done: Callable[[bool], None],
) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    ok = False
    try:
        while True:
            if conn.body:
                yield conn.take_body()
                continue
            if conn.done:
                ok = True
                break
            if conn.error is not None or conn.closed:
                raise conn.error or UpstreamBroken("the upstream closed the connection")
            fut = conn.body_waiter = loop.create_future()
            handle = loop.call_later(timeout, _on_timeout, conn, fut)
            try:
                await fut
            finally:
                handle.cancel()
                conn.body_waiter = None
    finally:
        if ok and (sender is None or sender.done()):
            conn.pool.put(conn)
        else:
            if sender is not None and not sender.done():
                sender.cancel()
            conn.close()
        done(ok)
