"""The RPC server: TCP (TLS) and Unix-socket listeners, each connection read as frames and its
requests handed to one ``dispatch(peer, method, params)`` coroutine.

Several requests may be in flight on one connection (at most ``MAX_INFLIGHT``; reading pauses
beyond that); replies carry the request's id and may go out in any order. Whatever is not a
frame (garbage, an oversized length, plain HTTP, a failed or slow TLS handshake) closes that one
connection with a log line at INFO; the server and its other connections carry on.

Clients without a certificate (on a TCP port; they may only call ``ca_bundle`` and ``join``)
get tighter limits, so that nobody can make the agent hold memory before proving anything:
frames of at most ``UNAUTH_MAX_FRAME`` (64 KiB; a join with its CSR is about 1 KiB), each
frame complete within ``UNAUTH_TIMEOUT`` (10 s) of the last one (partial bytes do not count
as activity), and at most ``MAX_UNAUTH_CONNECTIONS`` (64) such connections at once: past
the cap a new one is closed at once. Certificate holders and the Unix socket keep the
default limits.

The ``Peer`` says who asked: ``identity`` is the verified node certificate's CN/OU/O (None when
the client sent no certificate, or on the Unix socket) and ``local`` is True only on the
Unix socket. Dispatch raises ``RpcError(code, message)`` for a clean error; any other
exception becomes code ``internal`` with the exception's text (and a traceback in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import MeshkitError
from meshkit.base.text import printable
from meshkit.cluster.rpc.framing import (
    MAX_FRAME,
    READ_SIZE,
    FrameDecoder,
    FrameError,
    RpcError,
    check_request,
    encode_frame,
    error_reply,
    format_address,
)
from meshkit.cluster.rpc.tlsaccept import accept_tls

if TYPE_CHECKING:
    from meshkit.cluster.rpc.pki import PeerIdentity

# One log for the wire, server and client alike: operators (and the tests) filter on this name.
log = logging.getLogger("meshkit.cluster.rpc.transport")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS client has to finish its handshake."""

IDLE_TIMEOUT = 300.0
"""Seconds a connection may stay silent (with no request being served) before it is closed."""

UNAUTH_MAX_FRAME = 64 * 1024
"""Largest frame accepted from a client without a certificate (a join frame is ~1 KiB)."""

UNAUTH_TIMEOUT = 10.0
"""Seconds a client without a certificate has for each whole frame (and stays when idle)."""

MAX_UNAUTH_CONNECTIONS = 64
"""Connections without a certificate open at once; past this a new one is closed at once."""

MAX_INFLIGHT = 64
"""Requests served at once per connection; reading pauses beyond this (back-pressure)."""


@dataclass
class Peer:
    """Who sent a request.

    ``identity``: the CN/OU/O of the client's verified node certificate, or None (no
    certificate, or the local Unix socket). ``local``: True only on the Unix socket, whose
    file mode decides who may connect. ``uid``: the connecting process's user on the Unix
    socket (SO_PEERCRED), when known.
    """

    identity: PeerIdentity | None
    address: str
    local: bool = False
    uid: int | None = None

    @property
    def is_manager(self) -> bool:
        """True when the peer proved with its certificate that it is a manager."""
        return self.identity is not None and self.identity.is_manager


Dispatch = Callable[[Peer, str, dict[str, Any]], Awaitable[Any]]
"""``dispatch(peer, method, params) -> result`` (anything JSON-serialisable)."""


def _tls_failure(exc: BaseException) -> str:
    """What went wrong in a server-side TLS handshake, in words."""
    text = str(exc) or type(exc).__name__
    if "HTTP_REQUEST" in text or "http request" in text.lower():
        return "a plain HTTP request on the TLS port"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE" in text.upper():
        return f"client certificate refused: {text}"
    return f"TLS handshake failed: {text}"


class RpcServer:
    """Serves RPC on TCP (TLS) and Unix-socket listeners, all through one dispatch."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_frame: int = MAX_FRAME,
        max_inflight: int = MAX_INFLIGHT,
        unauth_max_frame: int = UNAUTH_MAX_FRAME,
        unauth_timeout: float = UNAUTH_TIMEOUT,
        max_unauth: int = MAX_UNAUTH_CONNECTIONS,
    ) -> None:
        """A server that is not listening yet (see ``listen_tcp`` and ``listen_unix``)."""
        self._dispatch = dispatch
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.unauth_max_frame = unauth_max_frame
        self.unauth_timeout = unauth_timeout
        self.max_unauth = max_unauth
        self._unauth = 0  # connections without a certificate being served now
        self._servers: list[asyncio.AbstractServer] = []
        self._listeners: list[tuple[socket.socket, asyncio.Task[None]]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._unix_paths: list[tuple[Path, int, int]] = []  # path, st_dev, st_ino
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._connections)

    @property
    def unauthenticated(self) -> int:
        """TCP connections without a client certificate being served right now."""
        return self._unauth

    async def listen_tcp(
        self, host: str, port: int, ssl_ctx: ssl.SSLContext | None
    ) -> tuple[str, int]:
        """Listen on host:port; return the bound (host, port) (port 0 picks a free one).

        With ``ssl_ctx`` every connection must finish a TLS handshake within
        ``handshake_timeout`` (use ``server_ssl_context``); a failed handshake is logged at
        INFO with the client's address. Without it the port speaks plain frames and no
        client has an identity: for tests only.
        """
        if self._closed:
            raise MeshkitError("the RPC server is closed")
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        bound = sock.getsockname()
        task = asyncio.get_running_loop().create_task(
            self._accept_loop(sock, ssl_ctx), name=f"rpc accept {format_address(bound)}"
        )
        self._listeners.append((sock, task))
        return str(bound[0]), int(bound[1])

    async def _accept_loop(self, lsock: socket.socket, ssl_ctx: ssl.SSLContext | None) -> None:
        """Accept TCP connections until cancelled; each gets its own task."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accepting on %s failed: %s", format_address(lsock.getsockname()), exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._serve_tcp(conn, format_address(addr), ssl_ctx))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve_tcp(
        self, conn: socket.socket, address: str, ssl_ctx: ssl.SSLContext | None
    ) -> None:
        """One TCP connection: TLS handshake (errors logged here), then ``_serve``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport: asyncio.Transport
        try:
            if ssl_ctx is None:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            else:
                # The handshake runs in a thread, not on the loop (tlsaccept's module doc).
                transport = await accept_tls(
                    conn, ssl_ctx, lambda: protocol, self.handshake_timeout
                )
        except (OSError, asyncio.TimeoutError, EOFError) as exc:
            log.info("refused connection from %s: %s", address, _tls_failure(exc))
            conn.close()
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._serve(reader, writer, local=False, address=address)

    async def listen_unix(self, path: str | os.PathLike[str], mode: int = 0o660) -> None:
        """Listen on a Unix socket at ``path`` with file mode ``mode``.

        A stale socket file (nobody answers) is removed; a live one (another agent answers)
        is refused with a MeshkitError, as is a path that exists and is not a socket. The
        mode is set before the socket listens, so there is no window with a wider mode.
        """
        p = Path(path)
        await _clear_unix_path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(p))
            os.chmod(p, mode)
            st = os.stat(p)
            sock.setblocking(False)

            def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                """A local client connected: serve it in a task of its own."""
                if self._closed:
                    writer.close()
                    return
                task = asyncio.get_running_loop().create_task(
                    self._serve(reader, writer, local=True, address=f"unix:{p}")
                )
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)

            server = await asyncio.start_unix_server(on_connect, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                if p.is_socket():
                    p.unlink()
            raise
        self._servers.append(server)
        self._unix_paths.append((p, st.st_dev, st.st_ino))

    async def close(self) -> None:
        """Stop listening, close every connection (cancelling requests in progress), and
        remove the Unix socket files this server created."""
        self._closed = True
        for server in self._servers:
            server.close()
        for lsock, accept_task in self._listeners:
            accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await accept_task
            lsock.close()
        self._listeners.clear()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5.0)
        self._servers.clear()
        for p, dev, ino in self._unix_paths:
            with contextlib.suppress(OSError):
                st = p.lstat()
                if (st.st_dev, st.st_ino) == (dev, ino):
                    p.unlink()
        self._unix_paths.clear()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: bool,
        address: str,
    ) -> None:
        """One established connection: read frames and dispatch requests until it ends."""
        try:
            await self._serve_connection(reader, writer, local, address)
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take anything else down
            log.exception("RPC connection handler failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: bool,
        address: str,
    ) -> None:
        """The body of ``_serve``."""
        identity: PeerIdentity | None = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            from meshkit.cluster.rpc.pki import peer_identity

            identity = peer_identity(ssl_object.getpeercert(binary_form=True))
        uid = _peer_uid(writer) if local else None
        peer = Peer(identity=identity, address=address, local=local, uid=uid)
        log.debug("connection from %s (identity %s)", address, identity)
        if local or identity is not None:
            await self._serve_peer(reader, writer, peer, self.max_frame, self.idle_timeout, False)
            return
        # No certificate: anyone on the network. Cap how many such connections there are and
        # what each may make the agent hold (see the module doc).
        if self._unauth >= self.max_unauth:
            log.info(
                "refused connection from %s: %d connections without a certificate are open "
                "(the cap)",
                address,
                self._unauth,
            )
            return
        self._unauth += 1
        try:
            await self._serve_peer(
                reader, writer, peer, self.unauth_max_frame, self.unauth_timeout, True
            )
        finally:
            self._unauth -= 1

    async def _serve_peer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        max_frame: int,
        idle_timeout: float,
        whole_frames: bool,
    ) -> None:
        """Read frames and dispatch requests until the connection ends.

        ``whole_frames``: only complete frames (and finished requests) count as activity for
        the idle timer, so a frame trickled in byte by byte must still arrive within
        ``idle_timeout``.
        """
        address = peer.address
        decoder = FrameDecoder(max_frame)
        inflight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.max_inflight)
        write_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        # Idle timeout: one timer per connection, re-armed lazily from the time of the last
        # activity (cheaper than a wait_for around every read). Requests being served keep
        # the connection open however long they take.
        last_activity = loop.time()
        idle = False
        timer: asyncio.TimerHandle | None = None

        def touch(_task: object = None) -> None:
            nonlocal last_activity
            last_activity = loop.time()

        def check_idle(again: Callable[..., None]) -> None:
            # re-armed through its argument, not its own name: a closure naming itself is a
            # cycle (function -> cell -> function) that only a full collection frees
            nonlocal timer, idle
            due = last_activity + idle_timeout
            now = loop.time()
            if inflight or now < due:
                timer = loop.call_later(max(due - now, 0.0) or idle_timeout, again, again)
                return
            idle = True
            if whole_frames and decoder.buffered:
                log.info(
                    "closing connection from %s: no whole frame within %g s "
                    "(%d bytes of a partial frame)",
                    address,
                    idle_timeout,
                    decoder.buffered,
                )
            writer.close()  # the pending read then ends

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            slots.release()
            touch()

        timer = loop.call_later(idle_timeout, check_idle, check_idle)
        try:
            while True:
                try:
                    data = await reader.read(READ_SIZE)
                except (OSError, EOFError) as exc:
                    if not idle:
                        log.debug("connection from %s failed: %s", address, exc)
                    return
                if not data:
                    if idle:
                        log.debug("closed idle connection from %s", address)
                    return
                if not whole_frames:
                    touch()
                try:
                    messages = decoder.feed(data)
                except FrameError as exc:
                    log.info("closing connection from %s: %s", address, exc)
                    return
                if messages and whole_frames:
                    touch()
                for message in messages:
                    request = check_request(message)
                    if isinstance(request, str):
                        log.info("closing connection from %s: %s", address, request)
                        return
                    if isinstance(request, RpcError):
                        await self._send(writer, write_lock, error_reply(message["id"], request))
                        continue
                    await slots.acquire()
                    t = loop.create_task(self._handle(peer, request, writer, write_lock))
                    inflight.add(t)
                    t.add_done_callback(finished)  # one callback: each is a loop handle
        finally:
            if timer is not None:
                timer.cancel()
                # the handle holds check_idle, whose closure holds the handle (and the
                # writer): a cycle that only a full collection would free, and managers
                # never run one (raft/gcpauses.py)
                timer = None
            for t in inflight:
                t.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _handle(
        self,
        peer: Peer,
        request: tuple[int, str, dict[str, Any]],
        writer: asyncio.StreamWriter,
        write_lock: asyncio.Lock,
    ) -> None:
        """Run one request through dispatch and send its reply."""
        req_id, method, params = request
        reply: dict[str, Any]
        try:
            result = await self._dispatch(peer, method, params)
            reply = {"id": req_id, "result": result}
        except RpcError as exc:
            reply = error_reply(req_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("RPC %s from %s failed", printable(method, 80), peer.address)
            reply = error_reply(req_id, RpcError("internal", str(exc) or type(exc).__name__))
        try:
            frame = encode_frame(reply, self.max_frame)
        except (FrameError, ValueError, TypeError) as exc:
            log.error(
                "RPC %s from %s: cannot send the result: %s",
                printable(method, 80),
                peer.address,
                exc,
            )
            frame = encode_frame(
                error_reply(req_id, RpcError("internal", f"cannot send the result: {exc}"))
            )
        await _send_frame(writer, write_lock, frame)

    async def _send(
        self, writer: asyncio.StreamWriter, lock: asyncio.Lock, message: dict[str, Any]
    ) -> None:
        """Encode and send one message."""
        await _send_frame(writer, lock, encode_frame(message, self.max_frame))


SEND_NOW = 64 * 1024
"""A frame is written at once, without the lock and the wait for the buffer to drain, while
nobody else is sending on the connection and what is buffered stays under this (a heartbeat's
reply, the common case: the lock and drain were a tenth of a reply's cost)."""


async def _send_frame(writer: asyncio.StreamWriter, lock: asyncio.Lock, frame: bytes) -> None:
    """Write one frame and wait for the buffer to drain; a gone peer is not an error."""
    if not lock.locked():
        if writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() + len(frame) <= SEND_NOW:
            writer.write(frame)  # one write per frame: frames never interleave
            return
    async with lock:
        if writer.is_closing():
            return
        writer.write(frame)
        with contextlib.suppress(OSError):
            await writer.drain()


async def _clear_unix_path(p: Path) -> None:
    """Remove a stale socket at ``p``; refuse a live one or a non-socket."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise MeshkitError(f"{p} exists and is not a socket; not replacing it")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(p)), 2.0)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing the stale socket %s (nobody answers on it)", p)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        return
    except (OSError, asyncio.TimeoutError) as exc:
        raise MeshkitError(f"cannot tell whether an agent is listening on {p}: {exc}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise MeshkitError(
        f"another meshkit agent is already listening on {p}; stop it first "
        "or choose another socket with --host"
    )


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return None
    return int(uid)
