"""The HTTP/1.1 server of `meshkit web`: uvloop + httptools, sockets owned by the server.

Why the server owns its sockets: uvloop has no loop.sendfile() and refuses add_writer() on a
socket that belongs to a transport (RuntimeError). So the server creates the listening
sockets itself and watches them and every accepted connection with
loop.add_reader(); it reads with recv(), feeds httptools, and writes with the send path of
meshkit.web.sendfile (the compiled send()/sendfile(2) loop of meshkit._fastpath, or its
pure-Python twin), calling loop.add_writer() only when the socket buffer is full.

This module is the listener: HttpServer (accept loop, settings, the timeout sweep, shutdown).
A connection is these parts, one module each:

- meshkit.web.connstate: the connection's states and their transitions (sans-IO);
- meshkit.web.connection: reading and parsing;
- meshkit.web.lifecycle: state changes, timeouts and closing (lingering close: shut the write
  side, discard input for a moment, so that the client reads the response, not a reset);
- meshkit.web.pipeline: pipelined requests answered in order (a synchronous Response is
  written at once, in the parser callback; an awaitable is awaited);
- meshkit.web.reqbody: the request body (`100 Continue` on the first read; an unread body is
  discarded up to `max_discard`, past that the connection closes after the response);
- meshkit.web.output: the queue of write jobs (bytes, or a head plus a file range) and the
  responses remembered by request head (meshkit.web.respcache: a later read of the same
  bytes between requests is answered after one stat per file, without parser or handlers).

Timeouts are checked by one timer per server: a partial request head older than
`header_timeout` gets 408 and close (a fresh connection that sent nothing is just closed), a
keep-alive connection idle for `idle_timeout` is closed, a body read that waits
`read_timeout` closes the connection, as does a client that takes nothing of a blocked
response for `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.web.connection import Connection
from meshkit.web.h2conn import H2Connection, PlainH2Socket
from meshkit.web.lifecycle import PEER_ALIVE, PEER_RESET, peer_state_fd
from meshkit.web.message import Handler
from meshkit.web.proxyhdr import ProxyPolicy, ProxyStage
from meshkit.web.reqbody import BadRequestBody
from meshkit.web.respcache import ResponseCache
from meshkit.web.sendfile import SendPath, load_send_path
from meshkit.web.tlssock import TlsSocket, tls_lane

__all__ = [
    "DEFAULT_MAX_FIELDS",
    "DEFAULT_MAX_FIELD_LINE",
    "BadRequestBody",
    "HttpServer",
    "host_has_ipv6",
]

log = logging.getLogger("meshkit.web")

_ACCEPT_BATCH = 64
# the listening socket's family and protocol as plain ints (socket.socket.accept reads them
# through properties that make an IntEnum per connection, ~1.5 % of a new TLS connection)
_RAW_FAMILY = socket.socket.__mro__[1].family.__get__  # type: ignore[attr-defined]
_RAW_PROTO = socket.socket.__mro__[1].proto.__get__  # type: ignore[attr-defined]
# seconds between the sweeps that also probe connections for a client gone away unseen
# (Lifecycle.probe): one recv(MSG_PEEK) per connection probed
_PROBE_EVERY = 1.0
# Request head limits besides the total size: fields per head (Apache's LimitRequestFields
# and Go's default) and bytes per field line (nginx's large_client_header_buffers 8k).
DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_FIELD_LINE = 8192


class HttpServer:
    """An HTTP/1.1 server for one handler, on as many addresses as `listen` is called with.

    header_limit: bytes of request line and header fields before 431 (and close);
    max_fields: header fields a request head may have, max_field_line: bytes of one field
    (`name: value`), both checked as fields arrive (431 and close past either, as nginx's
    large_client_header_buffers and Apache's LimitRequestFields do);
    header_timeout: seconds a request head may take before 408 (and close); a new connection
    that sends nothing in that time is closed; idle_timeout: seconds a keep-alive connection
    may stay idle; write_timeout: seconds a blocked response may make no progress before the
    connection is closed (None: idle_timeout); read_timeout: seconds a
    handler waits for request body bytes before the connection is closed (math.inf for any
    of them: no timeout); max_discard: bytes
    of an unread request body the server reads and drops to keep the connection (more closes
    it after the response).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        header_limit: int = 1 << 20,
        max_fields: int = DEFAULT_MAX_FIELDS,
        max_field_line: int = DEFAULT_MAX_FIELD_LINE,
        header_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        read_timeout: float = 60.0,
        write_timeout: float | None = None,
        max_discard: int = 1 << 20,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        # HTTPS: every accepted socket is wrapped in a TlsSocket (meshkit.web.tlssock) that
        # stands in for both the socket and the send path; None: plain HTTP, untouched
        self._tls = tls
        self._header_limit = header_limit
        self._max_fields = max_fields
        self._max_field_line = max_field_line
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._read_timeout = read_timeout
        self._write_timeout = idle_timeout if write_timeout is None else write_timeout
        self._max_discard = max_discard
        self._send: SendPath = load_send_path()
        # responses remembered by request head (handlers that mark theirs as such only)
        self._cache = ResponseCache()
        self._caching = bool(getattr(handler, "validated_responses", False))
        self._listeners: list[socket.socket] = []
        # a listener bound to one address (made here): every socket it accepts has that
        # local address, so accepting asks no getsockname(2) of its own
        self._bound_to: dict[socket.socket, Any] = {}
        self._conns: set[Connection | H2Connection | ProxyStage] = set()
        self._proxy: ProxyPolicy | None = None  # `proxyprotocol`
        self._h2c = False  # `tls off h2c`: plain connections may start with the h2 preface
        # on-demand TLS: asked with each ClientHello's SNI (meshkit.web.autotls)
        self._on_demand: Callable[[str], Any] | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._sweeper: asyncio.TimerHandle | None = None
        self._shutting = False
        self._all_closed: asyncio.Future[None] | None = None
        self._accept_paused: asyncio.TimerHandle | None = None
        # loop.time() as of the last timeout sweep: deadlines on the hot path use this
        # coarse clock (they are checked only by the sweep anyway).
        self._now = 0.0
        self._next_probe = 0.0
        self._tick = _tick(header_timeout, idle_timeout, read_timeout, self._write_timeout)

    def set_header_limit(self, limit: int) -> None:
        """Change the header limit; request heads read from now on are held to it."""
        self._header_limit = limit
        self._cache.clear()  # a remembered head may be over the new limit

    def set_limits(
        self,
        *,
        header_limit: int | None = None,
        max_fields: int | None = None,
        max_field_line: int | None = None,
    ) -> None:
        """Change the request head limits given (a reload); heads read from now on are held
        to them."""
        if header_limit is not None:
            self._header_limit = header_limit
        if max_fields is not None:
            self._max_fields = max_fields
        if max_field_line is not None:
            self._max_field_line = max_field_line
        self._cache.clear()  # a remembered head may be over the new limits

    def set_timeouts(
        self,
        *,
        header: float | None = None,
        idle: float | None = None,
        read: float | None = None,
        write: float | None = None,
    ) -> None:
        """Change the timeouts given (seconds, math.inf for none; see the class);
        connections pick them up as their deadlines are next set."""
        if header is not None:
            self._header_timeout = header
        if idle is not None:
            self._idle_timeout = idle
        if read is not None:
            self._read_timeout = read
        if write is not None:
            self._write_timeout = write
        self._tick = _tick(
            self._header_timeout, self._idle_timeout, self._read_timeout, self._write_timeout
        )

    def set_tls(self, tls: ssl.SSLContext | None) -> None:
        """Serve connections accepted from now on with this context (None: plain HTTP)."""
        self._tls = tls

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def compiled(self) -> bool:
        """Whether the compiled send path (meshkit._fastpath) is in use."""
        return self._send.compiled

    def set_handler(self, handler: Handler) -> None:
        """Use handler for requests whose head completes from now on (a config reload);
        open connections stay open and requests already dispatched finish as they are."""
        self._handler = handler
        self._caching = bool(getattr(handler, "validated_responses", False))
        self._cache.clear()
        for conn in list(self._conns):
            if isinstance(conn, H2Connection):
                conn.reloaded()  # GOAWAY: its client reconnects to the new configuration

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Accept connections on host:port ("" or "0.0.0.0" for every IPv4 address, "::" for
        every IPv6 address, IPv6 only: listen on both for dual stack), or on `sock` (a bound
        stream socket; it is put in listening mode if needed and owned by the server from then
        on). May be called several times. Failures such as
        EADDRINUSE raise MeshkitError naming host:port."""
        self._loop = asyncio.get_running_loop()
        if self._shutting:
            raise MeshkitError("the server is shutting down")
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if sock is None:
            try:
                infos = await self._loop.getaddrinfo(
                    host or "0.0.0.0",
                    port,
                    type=socket.SOCK_STREAM,
                    flags=socket.AI_PASSIVE,
                )
            except OSError as exc:
                raise MeshkitError(f"cannot listen on {where}: {exc}") from None
            family, type_, proto, _, addr = infos[0]
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(1024)
                if addr[0] not in ("0.0.0.0", "::"):
                    self._bound_to[sock] = sock.getsockname()
            except OSError as exc:
                sock.close()
                raise MeshkitError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        else:
            try:
                sock.listen(1024)
            except OSError as exc:
                raise MeshkitError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listeners.append(sock)
        self._loop.add_reader(sock.fileno(), self._on_accept, sock)
        self._now = self._loop.time()
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._tick, self._sweep)

    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) of every listening socket, in the order they were added."""
        out: list[tuple[str, int]] = []
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    @property
    def open_connections(self) -> int:
        """Client connections currently open (lingering ones included)."""
        return len(self._conns)

    def _on_accept(self, lsock: socket.socket) -> None:
        accept = lsock._accept  # type: ignore[attr-defined]
        family, proto = _RAW_FAMILY(lsock), _RAW_PROTO(lsock)
        bound = self._bound_to.get(lsock)
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, remote = accept()
                sock = socket.socket(family, socket.SOCK_STREAM, proto, fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "accept on %s failed: %s; pausing accepts for 1 s", lsock.getsockname(), exc
                    )
                    self._pause_accepting(1.0)
                    return
                continue  # an error about this one connection (ECONNABORTED, EPROTO, ...)
            if self._shutting:
                sock.close()
                continue
            try:
                sock.setblocking(False)
                # TCP: a unix socket's peer is a str or bytes (sock.family would make an
                # IntEnum per connection, ~2 % of a new TLS connection's CPU)
                if type(remote) is tuple:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                local = bound if bound is not None else sock.getsockname()
            except OSError:
                sock.close()
                continue
            if self._proxy is not None:  # `proxyprotocol`: the header first
                stage = ProxyStage(self, sock, remote, local, self._proxy)
                self._conns.add(stage)
                stage.start()
                continue
            self._start_conn(sock, remote, local)

    def _start_conn(self, sock: socket.socket, remote: Any, local: Any) -> None:
        """Serve an accepted socket (HTTP/1.1, or TLS and then HTTP/1.1 or h2)."""
        if self._tls is None:
            conn = Connection(self, self._loop, self._send, sock, remote, local)
        else:
            tsock = TlsSocket(sock, self._tls)
            conn = Connection(self, self._loop, tsock, tsock, remote, local)  # type: ignore[arg-type]
            conn._scheme = "https"
            conn._raw = sock  # (probed under the TLS: Lifecycle.probe)
            conn._lane = tls_lane(conn, self, tsock)  # (meshkit.web.lane's, over TLS)
            tsock.on_h2 = functools.partial(self._take_h2, conn)
            if self._on_demand is not None:
                tsock.on_demand = self._on_demand
                tsock.on_resume = conn._on_readable
        self._conns.add(conn)
        conn.start()

    def set_on_demand(self, ask: Callable[[str], Any] | None) -> None:
        """On-demand TLS for connections accepted from now on: ask(sni) before each
        handshake, None or a future to wait for (meshkit.web.autotls.CertHub.on_demand)."""
        self._on_demand = ask

    def set_h2c(self, on: bool) -> None:
        """Whether plain connections accepted from now on may speak HTTP/2 by prior
        knowledge (h2c; a TLS port ignores this: h2 is chosen by ALPN there)."""
        self._h2c = on

    def _take_h2c(self, conn: Connection, data: bytes) -> None:
        """A plain connection began with the HTTP/2 preface: an H2Connection on the same
        socket takes it over, starting with what was read."""
        conn._unwatch()
        conn._parser = conn._lane = None  # (they hold conn: freed without a GC pass)
        self._conns.discard(conn)
        remote = (conn._remote_addr, conn._remote_port)
        local = (conn._local_addr, conn._local_port)
        sock = PlainH2Socket(conn._sock, self._send.send_bytes)  # type: ignore[arg-type]
        h2c = H2Connection(self, self._loop, sock, remote, local, scheme="http")
        self._conns.add(h2c)
        h2c.start()
        h2c.data_received(data)

    def set_proxy_protocol(self, policy: ProxyPolicy | None) -> None:
        """Expect PROXY headers from these sources on connections accepted from now on
        (meshkit.web.proxyhdr); None: none."""
        self._proxy = policy

    def _take_h2(self, conn: Connection, tsock: TlsSocket) -> Callable[[bytes], None]:
        """ALPN chose h2 on conn's socket: an H2Connection (meshkit.web.h2conn) takes it over;
        conn is dropped without closing the socket."""
        conn._unwatch()
        conn._parser = conn._lane = None  # (they hold conn: freed without a GC pass)
        self._conns.discard(conn)
        remote = (conn._remote_addr, conn._remote_port)
        local = (conn._local_addr, conn._local_port)
        h2c = H2Connection(self, self._loop, tsock, remote, local)
        self._conns.add(h2c)
        h2c.start()
        return h2c.data_received

    def _pause_accepting(self, delay: float) -> None:
        for lsock in self._listeners:
            self._loop.remove_reader(lsock.fileno())

        def resume() -> None:
            self._accept_paused = None
            if not self._shutting:
                for lsock in self._listeners:
                    self._loop.add_reader(lsock.fileno(), self._on_accept, lsock)

        self._accept_paused = self._loop.call_later(delay, resume)

    def _sweep(self) -> None:
        now = self._now = self._loop.time()
        for conn in list(self._conns):
            conn.check_deadline(now)
        if now >= self._next_probe:
            self._next_probe = now + _PROBE_EVERY
            for conn in list(self._conns):
                try:
                    if type(conn) is Connection:
                        conn.probe()
                    elif type(conn) is H2Connection:
                        _probe_h2(conn)
                except Exception:  # a reader run by the probe failed: the sweep goes on
                    log.exception("probing connection %r failed", conn)
        if self._listeners or self._conns:
            self._sweeper = self._loop.call_later(self._tick, self._sweep)
        else:
            self._sweeper = None

    def _conn_closed(self, conn: Any) -> None:
        self._conns.discard(conn)
        if not self._conns and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def _close_listeners(self) -> None:
        if self._accept_paused is not None:
            self._accept_paused.cancel()
            self._accept_paused = None
        for lsock in self._listeners:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(lsock.fileno())
            lsock.close()
        self._listeners = []
        self._bound_to.clear()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle keep-alive connections at once, let responses in flight
        finish for up to `grace` seconds (their connections close after them), then close
        whatever is left."""
        self._shutting = True
        if self._loop is None:
            return
        self._close_listeners()
        for conn in list(self._conns):
            conn.begin_shutdown()
        if self._conns:
            self._all_closed = self._loop.create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), grace)
        self.close_now()

    def close_now(self) -> None:
        """Close the listening sockets and every connection at once."""
        self._shutting = True
        self._cache.clear()
        if self._loop is None:
            return
        self._close_listeners()
        for conn in list(self._conns):
            conn._abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def _probe_h2(conn: H2Connection) -> None:
    """Lifecycle.probe for an HTTP/2 connection: it watches its socket while open, so a
    reset or EOF its reader was not called for (the loop dropped the watch) runs the reader;
    one that stopped watching (its close is lingering) is aborted on a reset."""
    if conn._closed:
        return
    seen = peer_state_fd(conn._fd)
    if seen == PEER_ALIVE:
        return
    if conn._reading:
        conn._on_readable()
    elif seen == PEER_RESET:
        conn._abort()


def _tick(*timeouts: float) -> float:
    """How often the sweep checks deadlines: a quarter of the shortest timeout, 10 ms..1 s."""
    return max(0.01, min(1.0, min(timeouts) / 4))


def host_has_ipv6() -> bool:
    """Whether this host can listen on IPv6 (a socket bound to [::1] works)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
