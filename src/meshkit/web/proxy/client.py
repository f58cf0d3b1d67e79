"""The proxy's HTTP/1.1 client: a keep-alive pool per upstream and one request/response exchange.

Each upstream connection is a uvloop protocol feeding httptools' C response parser. The hot
case (a small response whose whole body arrives with its head) costs one write of the request
head, one parse, and a bytes body handed back with the connection already back in the pool;
anything longer is streamed as an async iterator, with reading paused while the client is slow.
Request bodies stream upstream as they arrive (chunked when the client sent them chunked).

A response to an Upgrade request that says 101 keeps its connection out of the pool: the
caller relays it (meshkit.web.proxy.tunnel).

Two ways to run an exchange share the connection, the parser and the error rules:

- `exchange()`, a coroutine: dials when no kept connection is idle, streams request bodies,
  retries a stale kept connection on a fresh one;
- `_Conn.start()`, synchronous, on a kept connection taken with `Pool.take_idle()`: the head
  is written at once and `on_ready(conn)` is called from data_received (or on failure) once
  the response head is in; the handler turns that into the Response of a plain Future, with
  no task and no coroutine per request.

An upstream's response head is held to MAX_HEAD bytes and MAX_FIELDS fields, and a field
value with a control character (NUL, a bare CR or LF, DEL...) is refused: all three end the
exchange with UpstreamBroken (502), as nginx answers, rather than pass on a head that could
split the client's response or make the server buffer without bound.

A request body that fails on the client's side (malformed chunked framing, a connection
closed mid-body, the `limits` size) ends the exchange with ClientBodyFailed: the upstream
connection is closed without the last chunk (so the upstream cannot take a short body as
whole) and the client gets 400 (413 past a limit), not a 502 blamed on the upstream.

No timer per request: every exchange in flight has a deadline on its connection, and one
sweep per proxy block (meshkit.web.proxy.deadlines) fails those past it with
UpstreamTimeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, cast

import httptools

from meshkit._ext import load_fastpath
from meshkit.web.message import Body, BodyTooLarge
from meshkit.web.proxy.deadlines import Deadlines
from meshkit.web.proxy.dial import SrvError, dial, lookup_srv
from meshkit.web.proxy.plainhead import (  # MAX_*: bounds on an upstream's response head
    _HEADS,
    HEADS_REMEMBERED,
    MAX_FIELDS,
    MAX_HEAD,
    REMEMBER_BELOW,
    _head_reply,
    _simple_head,
)
from meshkit.web.proxy.upstream import Upstream

__all__ = [
    "MAX_FIELDS",
    "MAX_HEAD",
    "ClientBodyFailed",
    "ConnectFailed",
    "Deadlines",
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


class ClientBodyFailed(UpstreamError):
    """Reading the client's request body failed while it went upstream: the client's fault,
    not the upstream's (no passive failure, no retry). `status` is the answer: 413 past
    the body limit, else 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a response head past the limits."""


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
        self.headers: list[tuple[str, str]] = []  # as received, latin-1
        self.fed = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.head_done = False
        self.done = False
        self.head_only = False
        self.interim = False
        self.keep = True
        self.closed = False
        self.got_bytes = False
        self.head_size = 0  # bytes of the response head so far (see MAX_HEAD)
        self.read_paused = False
        self.write_paused = False
        self.upgrade_rest: bytes | None = None
        self.in_head = False  # httptools is reading a head's fields
        self.error: UpstreamError | None = None
        self.framed = True  # the body has a length or is chunked (else it ends at close)
        self.deadline = 0.0
        self.timeout = 0.0
        # the synchronous exchange waiting for its response head (see start())
        self.on_ready: Callable[[_Conn], None] | None = None

    def begin(self, head_only: bool) -> None:
        self.status = 0
        self.headers = []
        self.body = []
        self.buffered = 0
        self.head_done = self.done = self.interim = False
        self.head_only = head_only
        self.got_bytes = False
        self.head_size = 0
        self.fed = False  # bytes of this response went to the parser
        self.error = None

    def start(self, head: bytes, head_only: bool, on_ready: Callable[[_Conn], None]) -> None:
        """Send a request without a body on this (kept) connection; `on_ready(self)` is
        called once the response head is in or the exchange failed (self.error set)."""
        self.begin(head_only)
        self.on_ready = on_ready
        self.pool.deadlines.watch(self, self.pool.timeout)
        assert self.transport is not None
        self.transport.write(head)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if not self.fed and (self._head_whole(data) if self.head_only else self._whole(data)):
            self._wake()
            return
        self.fed = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_rest = data[exc.args[0] :]
            self.done = True
        except httptools.HttpParserError as exc:
            if not self.done and self.error is None:
                self.error = UpstreamBroken(f"bad HTTP from the upstream: {exc}")
            self.keep = False
            self.close()
        else:
            if not self.head_done and self.error is None:
                # a head still incomplete: httptools holds its partial field out of our
                # sight, so count what came (a head spanning reads is bounded too)
                self.head_size += len(data)
                if self.head_size > MAX_HEAD:
                    self.error = UpstreamBroken(
                        f"the upstream's response head is over {MAX_HEAD} bytes"
                    )
                    self.keep = False
                    self.close()
        self._wake()

    def _whole(self, data: bytes) -> bool:
        """Take `data` as one whole plain response (HTTP/1.1, a Content-Length and exactly
        that many body bytes: the usual small answer) without the parser's callbacks; False
        leaves anything else, untouched, to the parser."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or self.head_only:
            return False
        raw = data[:end]
        known = _HEADS.get(raw)
        if known is None:
            known = _simple_head(raw)
            if known is None:
                return False
            if end <= REMEMBER_BELOW:
                if len(_HEADS) >= HEADS_REMEMBERED:
                    _HEADS.clear()
                _HEADS[raw] = known
        status, headers, length, keep = known
        body_start = end + 4
        if len(data) - body_start != length:
            return False
        self.status = status
        self.headers = headers
        self.head_done = self.done = True
        self.framed = True
        self.keep = self.keep and keep
        if length:
            self.body.append(data[body_start:])
            self.buffered = length
        return True

    def _head_whole(self, data: bytes) -> bool:
        """Take `data` as the whole answer to a HEAD request (a plain HTTP/1.1 head in one
        read): the connection stays kept unless more bytes came after it or the upstream
        said close. False leaves anything else to the parser (which then closes)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        known = _head_reply(data[:end])
        if known is None:
            return False
        self.status, self.headers, _, keep = known
        self.head_done = self.done = True
        self.framed = True
        # bytes after the head answer nothing we asked: do not reuse the connection
        self.keep = self.keep and keep and len(data) == end + 4
        return True

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

    def on_message_begin(self) -> None:
        # a list of its own: the one _whole() left may be shared with _HEADS
        self.headers = []
        self.in_head = True  # fields come until the head ends (later ones are trailers)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a chunked body's trailer fields: dropped (never sent on as fields)
        headers = self.headers
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if not self.head_done:
            self.head_size += len(name) + len(value) + 4
            if len(headers) > MAX_FIELDS or self.head_size > MAX_HEAD:
                self.error = UpstreamBroken(
                    f"the upstream's response head is over {MAX_HEAD} bytes or {MAX_FIELDS} fields"
                )
                raise _HeadTooLarge  # stops the parser (data_received closes)

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: wait for the real response
            self.headers = []
            return
        self.status = status
        self.head_done = True
        self.keep = self.keep and bool(self.parser.should_keep_alive())
        self.framed = status == 101 or any(
            n.lower() in ("content-length", "transfer-encoding") for n, _ in self.headers
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
        ready = self.on_ready
        if ready is not None:
            if self.head_done or self.error is not None:
                self.on_ready = None
                self.pool.deadlines.watched.discard(self)
                ready(self)
            return
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

    def time_out(self) -> None:
        """The deadline passed (Deadlines): fail the exchange with UpstreamTimeout."""
        if self.error is None:
            self.error = UpstreamTimeout(
                f"{self.pool.upstream.name} did not answer within {self.timeout:g}s"
            )
        self.close()
        self._wake()

    async def drained(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    def close(self) -> None:
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.close()


def _conn_class() -> type[_Conn]:
    """The connection class: the compiled one (meshkit._fastpath.UpstreamConn: response
    heads and bodies framed in C) or the pure-Python _Conn (MESHKIT_NO_EXTENSIONS=1, or not
    built). Both have the same attributes and methods."""
    fastpath = load_fastpath()
    # MESHKIT_UPSTREAM_LANE=0: the twin with the other extensions on (to measure this alone)
    off = os.environ.get("MESHKIT_UPSTREAM_LANE") == "0"
    if fastpath is None or off or not hasattr(fastpath, "UpstreamConn"):
        return _Conn
    fastpath.upstream_setup(
        UpstreamBroken,
        UpstreamTimeout,
        httptools.HttpResponseParser,
        httptools.HttpParserError,
        httptools.HttpParserUpgrade,
        _HeadTooLarge,
    )
    # duck-typed: the same attributes and methods as _Conn
    return cast("type[_Conn]", fastpath.UpstreamConn)


CONN = _conn_class()


class Pool:
    """Connections to one upstream: up to `keepalive` idle ones kept for reuse (0: none)."""

    def __init__(
        self,
        upstream: Upstream,
        keepalive: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        deadlines: Deadlines | None = None,
        socket_for: Callable[[str, int], socket.socket] | None = None,
        fallback_delay: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.fallback_delay = fallback_delay  # happy eyeballs (meshkit.web.proxy.dial)
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.timeout = connect_timeout  # for start(): the block's `timeout`
        self.ssl_context = ssl_context
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        # makes the sockets of a service's task upstream (ServiceDirectory.socket_for)
        self.socket_for = socket_for
        self.idle: list[_Conn] = []

    def take_idle(self) -> _Conn | None:
        """A kept connection, newest first, or None (then dial with connect())."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self) -> tuple[_Conn, bool]:
        """A connection to send one request on, and whether it was reused."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        return await self.connect(), False

    async def connect(self) -> _Conn:
        up = self.upstream
        if up.service and self.socket_for is not None:
            return await self._connect_service()
        loop = asyncio.get_running_loop()
        try:
            if up.scheme == "unix":
                coro: Awaitable[Any] = loop.create_unix_connection(lambda: CONN(self), up.path)
                _, conn = await asyncio.wait_for(coro, self.connect_timeout)
                return conn  # type: ignore[no-any-return]
            if up.is_srv:
                return await asyncio.wait_for(self._connect_srv(), self.connect_timeout)
            proto = await asyncio.wait_for(self._dial(up.host, up.port), self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connecting to {up.name} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {up.name}: {exc}") from None
        assert isinstance(proto, CONN)
        return proto

    def _dial(self, host: str, port: int) -> Awaitable[asyncio.Protocol]:
        return dial(
            lambda: CONN(self),
            host,
            port,
            tls=self.ssl_context if self.upstream.tls else None,
            fallback_delay=self.fallback_delay,
        )

    async def _connect_srv(self) -> _Conn:
        """An SRV locator: its targets in RFC 2782 order, the first reachable one."""
        up = self.upstream
        try:
            records = await lookup_srv(up.host)
        except SrvError as exc:
            raise ConnectFailed(f"{up.name}: {exc}") from None
        problems = []
        for r in records:
            try:
                proto = await self._dial(r.target, r.port)
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"{r.target}:{r.port}: {exc}")
                continue
            assert isinstance(proto, CONN)
            return proto
        raise ConnectFailed(f"cannot connect to {up.name}: " + "; ".join(problems))

    async def _connect_service(self) -> _Conn:
        """Dial a service's task on a socket from the directory (made in the namespace the
        task is reachable from), then run the usual protocol on it."""
        loop = asyncio.get_running_loop()
        up = self.upstream
        assert self.socket_for is not None
        family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
        try:
            sock = self.socket_for(up.service, family)
        except Exception as exc:  # the directory's failure (namespace gone...), not ours
            raise ConnectFailed(
                f"cannot make a socket for service {up.service!r} ({up.name}): {exc}"
            ) from None
        try:
            sock.setblocking(False)
            await asyncio.wait_for(
                loop.sock_connect(sock, (up.host, up.port)), self.connect_timeout
            )
            _, conn = await loop.create_connection(lambda: CONN(self), sock=sock)
        except asyncio.TimeoutError:
            sock.close()
            raise ConnectFailed(f"connecting to {up.name} timed out") from None
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"cannot connect to {up.name}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        return conn

    def retire(self) -> None:
        """The upstream left the set: close its idle connections now and those in use as
        their exchanges end."""
        self.keepalive = 0
        self.close()

    def put(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if not conn.keep or len(self.idle) >= self.keepalive:
            conn.close()
            return
        conn.waiter = conn.body_waiter = None
        conn.on_ready = None
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
        headers: list[tuple[str, str]],
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
    except Exception as exc:
        # The client's body broke off or was malformed (e.g. a Content-Length trailer,
        # which httptools refuses after the last chunk was parsed but before the message
        # completes), or went past `limits`: close without the last chunk so the upstream
        # cannot take a short body as whole, and say whose fault it was so that the client
        # gets 400/413 rather than a 502 that marks a sound upstream as failed.
        if conn.error is None and not conn.head_done:
            status = 413 if isinstance(exc, BodyTooLarge) else 400
            conn.error = ClientBodyFailed(f"the client's request body failed: {exc!r}", status)
        conn.close()
        conn._wake()


IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


def may_retry(conn: _Conn, reused: bool, method: str, has_body: bool) -> bool:
    """Whether a failed exchange may be sent again on a fresh connection: a kept connection
    the upstream had closed (nothing came back, no timeout) for an idempotent request
    without a body."""
    return (
        reused
        and not has_body
        and not conn.got_bytes
        and method in IDEMPOTENT
        and not isinstance(conn.error, UpstreamTimeout)
    )


def broken(conn: _Conn) -> UpstreamError:
    """The error of a failed exchange (its connection closed)."""
    error = conn.error or UpstreamBroken("the upstream closed the connection")
    conn.close()
    return error


async def exchange(
    pool: Pool,
    head: bytes,
    body: Body | None,
    chunked: bool,
    head_only: bool,
    timeout: float,
    done: Callable[[bool], None],
    method: str = "GET",
    fresh: bool = False,
) -> Reply:
    """Send one request (its head already serialized) and read the response head.

    `done(ok)` is called once the exchange is over: with the reply for a bytes body, after
    the last piece for a streamed one (ok False when it broke off). `fresh` dials a new
    connection rather than reusing a kept one. Raises ConnectFailed (nothing was sent),
    UpstreamTimeout or UpstreamBroken."""
    loop = asyncio.get_running_loop()
    if fresh:
        conn, reused = await pool.connect(), False
    else:
        conn, reused = await pool.acquire()
    deadlines = pool.deadlines
    while True:
        conn.begin(head_only)
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        sender = None
        if body is not None:
            sender = loop.create_task(_send_body(conn, body, chunked))
        fut = conn.waiter = loop.create_future()
        deadlines.watch(conn, timeout)
        try:
            if not (conn.head_done or conn.error is not None or conn.closed):
                await fut
        except BaseException:
            conn.close()
            raise
        finally:
            deadlines.unwatch(conn)
            conn.waiter = None
        if conn.head_done:
            break
        if sender is not None:
            sender.cancel()
        retry = may_retry(conn, reused, method, body is not None)
        error = broken(conn)
        if retry:
            # an idle keep-alive connection the upstream had closed: try a fresh one once
            conn, reused = await pool.connect(), False
            continue
        raise error
    return finish(conn, sender, done)


def finish(conn: _Conn, sender: Any, done: Callable[[bool], None]) -> Reply:
    """The Reply of an exchange whose response head is in: the connection goes back to the
    pool at once when the whole body came with it, else the body is streamed."""
    if conn.status == 101:
        done(True)
        return Reply(101, conn.headers, b"", conn)
    if conn.done:
        data = conn.take_body()
        if sender is None or sender.done():
            conn.pool.put(conn)
        else:
            conn.close()  # answered before the whole request body was sent
        done(True)
        return Reply(conn.status, conn.headers, data, None)
    return Reply(conn.status, conn.headers, Stream(_stream(conn, sender, conn.timeout, done)), None)


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
    deadlines = conn.pool.deadlines
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
            deadlines.watch(conn, timeout)
            try:
                await fut
            finally:
                deadlines.unwatch(conn)
                conn.body_waiter = None
    finally:
        if ok and (sender is None or sender.done()):
            conn.pool.put(conn)
        else:
            if sender is not None and not sender.done():
                sender.cancel()
            conn.close()
        done(ok)
