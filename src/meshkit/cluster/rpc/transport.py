"""Framed JSON RPC between nodes (mutual TLS over TCP) and from the CLI (the local Unix socket).

Wire format (``FrameDecoder`` / ``encode_frame``, sans-IO): every message is a 4-byte
big-endian length followed by that many bytes of UTF-8 JSON holding one object.

- request: ``{"id": n, "method": "name", "params": {...}}``
- reply:   ``{"id": n, "result": ...}`` or ``{"id": n, "error": {"code": c, "message": m}}``

Several requests may be in flight on one connection; replies carry the request's id and may
come in any order. Frames are capped (16 MiB by default). Whatever is not a frame (garbage,
an oversized length, plain HTTP, a failed or slow TLS handshake) closes that one connection
with a log line at INFO; the server and its other connections carry on.

Clients without a certificate (on a TCP port; they may only call ``ca_bundle`` and ``join``)
get tighter limits, so that nobody can make the agent hold memory before proving anything:
frames of at most ``UNAUTH_MAX_FRAME`` (64 KiB; a join with its CSR is about 1 KiB), each
frame complete within ``UNAUTH_TIMEOUT`` (10 s) of the last one (partial bytes do not count
as activity), and at most ``MAX_UNAUTH_CONNECTIONS`` (64) such connections at once: past
the cap a new one is closed at once. Certificate holders and the Unix socket keep the
limits above.

``RpcServer`` hands every request to one ``dispatch(peer, method, params)`` coroutine. The
``Peer`` says who asked: ``identity`` is the verified node certificate's CN/OU/O (None when
the client sent no certificate, or on the Unix socket) and ``local`` is True only on the
Unix socket. Dispatch raises ``RpcError(code, message)`` for a clean error; any other
exception becomes code ``internal`` with the exception's text (and a traceback in the log).

The CA bundle method: ``ca_bundle`` (``CA_BUNDLE_METHOD``) takes no params and returns
``{"bundle": "<PEM text>"}`` (a bare PEM string is accepted too), the exact bytes the token
digest is taken over. ``fetch_ca_bundle`` calls it without verifying the server, and
``check_ca_bundle`` then compares the bundle with the join token's digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import MeshkitError
from meshkit.base.text import printable

if TYPE_CHECKING:
    from meshkit.cluster.rpc.pki import PeerIdentity
    from meshkit.cluster.rpc.tokens import JoinToken

# The PKI (and with it `cryptography`) is imported only where a certificate is handled, so that
# the CLI's calls over the Unix socket and `ingress --service` never load it.

log = logging.getLogger("meshkit.cluster.rpc.transport")

MAX_FRAME = 16 * 1024 * 1024
"""Largest frame body accepted or sent, in bytes."""

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

CALL_TIMEOUT = 30.0
"""Default seconds a call waits for its reply."""

MAX_INFLIGHT = 64
"""Requests served at once per connection; reading pauses beyond this (back-pressure)."""

CA_BUNDLE_METHOD = "ca_bundle"
"""The method that returns the cluster CA bundle (PEM text); no certificate needed."""

MITM_MESSAGE = "the manager's CA does not match the token: possible man-in-the-middle"

_HEADER = struct.Struct(">I")
_READ_SIZE = 256 * 1024
_HTTP_STARTS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ")


class RpcError(MeshkitError):
    """An RPC that failed: ``code`` is machine-readable, ``message`` is for people.

    Codes used here: ``unreachable`` (cannot connect, or the connection went away),
    ``timeout`` (no reply in time), ``internal`` (the server's dispatch failed),
    ``bad_request`` (a malformed request), ``bad_reply``; dispatchers add their own
    (``forbidden``, ``not_found``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        """An error with a machine-readable code and a message that is shown as it is."""
        self.code = code
        self.message = message
        super().__init__(message)

    def __repr__(self) -> str:
        """``RpcError('code', 'message')``."""
        return f"RpcError({self.code!r}, {self.message!r})"


class FrameError(MeshkitError):
    """Bytes that are not a valid frame; the connection they came on is closed."""


# --------------------------------------------------------------------------- codec


def encode_frame(message: Mapping[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """One frame: 4-byte big-endian length + compact UTF-8 JSON of ``message``.

    Raises FrameError when the JSON is larger than ``max_frame`` and ValueError/TypeError
    when ``message`` is not JSON-serialisable (NaN and infinities included).
    """
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )
    if len(body) > max_frame:
        raise FrameError(f"message of {len(body)} bytes exceeds the {max_frame}-byte frame cap")
    return _HEADER.pack(len(body)) + body


def _describe_garbage(header: bytes) -> str:
    """A hint about what a bad frame header probably was."""
    if header.startswith(_HTTP_STARTS):
        return " (this looks like an HTTP request, not a meshkit RPC frame)"
    if header[:1] == b"\x16" and header[1:2] == b"\x03":
        return " (this looks like a TLS handshake on a plain socket)"
    return ""


class FrameDecoder:
    """Sans-IO frame decoder: feed it bytes as they come, get whole messages back.

    Any split of the byte stream yields the same messages. After a FrameError the decoder
    is unusable (the stream has lost its framing) and raises again on every feed.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        """A decoder refusing frames larger than ``max_frame`` bytes."""
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return the messages completed by them, in order.

        Raises FrameError for an oversized or empty length, bytes that are not UTF-8 JSON,
        or JSON that is not an object.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buf, pos)
                if length > self.max_frame:
                    raise FrameError(
                        f"frame length {length} exceeds the {self.max_frame}-byte cap"
                        + _describe_garbage(bytes(buf[pos : pos + 4]))
                    )
                if length == 0:
                    raise FrameError("empty frame")
                end = pos + _HEADER.size + length
                if len(buf) < end:
                    break
                body = bytes(buf[pos + _HEADER.size : end])
                pos = end
                try:
                    message = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    raise FrameError(
                        f"frame of {length} bytes is not UTF-8 JSON: {exc}"
                        + _describe_garbage(body[:4])
                    ) from None
                if not isinstance(message, dict):
                    raise FrameError(f"frame holds a JSON {type(message).__name__}, not an object")
                out.append(message)
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        del buf[:pos]
        return out


# --------------------------------------------------------------------------- server


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


def _format_address(addr: Any) -> str:
    """host:port (or [v6]:port) from a socket address."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) if addr else "?"


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
            self._accept_loop(sock, ssl_ctx), name=f"rpc accept {_format_address(bound)}"
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
                log.warning("accepting on %s failed: %s", _format_address(lsock.getsockname()), exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._serve_tcp(conn, _format_address(addr), ssl_ctx))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve_tcp(
        self, conn: socket.socket, address: str, ssl_ctx: ssl.SSLContext | None
    ) -> None:
        """One TCP connection: TLS handshake (errors logged here), then ``_serve``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: protocol,
                    conn,
                    ssl=ssl_ctx,
                    ssl_handshake_timeout=self.handshake_timeout if ssl_ctx is not None else None,
                ),
                self.handshake_timeout + 1.0,
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
        await self._clear_unix_path(p)
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

    async def _clear_unix_path(self, p: Path) -> None:
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

        def check_idle() -> None:
            nonlocal timer, idle
            due = last_activity + idle_timeout
            now = loop.time()
            if inflight or now < due:
                timer = loop.call_later(max(due - now, 0.0) or idle_timeout, check_idle)
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

        timer = loop.call_later(idle_timeout, check_idle)
        try:
            while True:
                try:
                    data = await reader.read(_READ_SIZE)
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
                    request = _check_request(message)
                    if isinstance(request, str):
                        log.info("closing connection from %s: %s", address, request)
                        return
                    if isinstance(request, RpcError):
                        await self._send(writer, write_lock, _error_reply(message["id"], request))
                        continue
                    await slots.acquire()
                    t = loop.create_task(self._handle(peer, request, writer, write_lock))
                    inflight.add(t)
                    t.add_done_callback(inflight.discard)
                    t.add_done_callback(lambda _t: slots.release())
                    t.add_done_callback(touch)
        finally:
            if timer is not None:
                timer.cancel()
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
            reply = _error_reply(req_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("RPC %s from %s failed", printable(method, 80), peer.address)
            reply = _error_reply(req_id, RpcError("internal", str(exc) or type(exc).__name__))
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
                _error_reply(req_id, RpcError("internal", f"cannot send the result: {exc}"))
            )
        await self._send_frame(writer, write_lock, frame)

    async def _send(
        self, writer: asyncio.StreamWriter, lock: asyncio.Lock, message: dict[str, Any]
    ) -> None:
        """Encode and send one message."""
        await self._send_frame(writer, lock, encode_frame(message, self.max_frame))

    @staticmethod
    async def _send_frame(writer: asyncio.StreamWriter, lock: asyncio.Lock, frame: bytes) -> None:
        """Write one frame and wait for the buffer to drain; a gone peer is not an error."""
        async with lock:
            if writer.is_closing():
                return
            writer.write(frame)
            with contextlib.suppress(OSError):
                await writer.drain()


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


def _error_reply(req_id: int, exc: RpcError) -> dict[str, Any]:
    """The reply frame for a failed request."""
    return {"id": req_id, "error": {"code": exc.code, "message": exc.message}}


def _check_request(message: dict[str, Any]) -> tuple[int, str, dict[str, Any]] | RpcError | str:
    """A valid request as (id, method, params); an RpcError to send back when only the id is
    usable; a string (why) when the connection should be closed."""
    req_id = message.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool):
        return "request without an integer id"
    method = message.get("method")
    if not isinstance(method, str) or not method:
        return RpcError("bad_request", "request without a method name")
    params = message.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return RpcError("bad_request", f"params of {method} must be a JSON object")
    return req_id, method, params


# --------------------------------------------------------------------------- client


class RpcClient:
    """One connection to an RPC server; several calls may be in flight at once."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        max_frame: int = MAX_FRAME,
    ) -> None:
        """Wrap an open connection (use ``connect_tcp`` or ``connect_unix``)."""
        self._reader = reader
        self._writer = writer
        self.address = address
        self.max_frame = max_frame
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._lost: str | None = None
        self._write_lock = asyncio.Lock()
        ssl_object = writer.get_extra_info("ssl_object")
        self.server_identity: PeerIdentity | None = None
        if ssl_object is not None:
            from meshkit.cluster.rpc.pki import peer_identity

            self.server_identity = peer_identity(ssl_object.getpeercert(binary_form=True))
        """CN/OU/O of the server's certificate (meaningful only when it was verified)."""
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"rpc reader {address}")

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        ssl_ctx: ssl.SSLContext | None,
        timeout: float = 10.0,
        *,
        expect_role: str | None = None,
        expect_cluster: str | None = None,
    ) -> RpcClient:
        """Connect (and finish the TLS handshake) within ``timeout`` seconds.

        ``expect_role`` / ``expect_cluster``: refuse the server unless its verified
        certificate has that OU / O (RpcError code ``untrusted``). Connection failures and
        timeouts raise RpcError code ``unreachable`` naming the address.
        """
        address = _format_address((host, port))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_ctx,
                    server_hostname="" if ssl_ctx is not None else None,
                    ssl_handshake_timeout=timeout if ssl_ctx is not None else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise RpcError(
                "unreachable", f"cannot reach {address}: no answer within {timeout:g} s"
            ) from None
        except ssl.SSLError as exc:
            raise RpcError(
                "unreachable", f"cannot reach {address}: TLS handshake failed: {exc}"
            ) from None
        except OSError as exc:
            raise RpcError(
                "unreachable", f"cannot reach {address}: {exc.strerror or exc}"
            ) from None
        client = cls(reader, writer, address)
        if expect_role is not None or expect_cluster is not None:
            ident = client.server_identity
            if (
                ident is None
                or (expect_role is not None and ident.role != expect_role)
                or (expect_cluster is not None and ident.cluster_id != expect_cluster)
            ):
                await client.close()
                raise RpcError(
                    "untrusted",
                    f"{address} is not a {expect_role or 'node'} of cluster "
                    f"{expect_cluster or '?'} (its certificate says {ident})",
                )
        return client

    @classmethod
    async def connect_unix(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> RpcClient:
        """Connect to an agent's local socket; RpcError ``unreachable`` naming the path."""
        address = f"unix:{os.fspath(path)}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(os.fspath(path)), timeout
            )
        except asyncio.TimeoutError:
            raise RpcError(
                "unreachable", f"cannot reach the agent at {path}: no answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            hint = (
                " (is the agent running? start one with `meshkit node init` or `meshkit node join`)"
                if isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
                else ""
            )
            raise RpcError(
                "unreachable", f"cannot reach the agent at {path}: {exc.strerror or exc}{hint}"
            ) from None
        return cls(reader, writer, address)

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._lost is not None

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """Call ``method`` and return its result.

        Raises RpcError with the server's code and message, ``unreachable`` when the
        connection is (or goes) away, ``timeout`` when no reply comes within ``timeout``.
        """
        if self._lost is not None:
            raise RpcError("unreachable", f"{method} to {self.address}: {self._lost}")
        req_id = self._next_id
        self._next_id += 1
        frame = encode_frame(
            {"id": req_id, "method": method, "params": dict(params or {})}, self.max_frame
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            async with self._write_lock:
                self._writer.write(frame)
                await self._writer.drain()
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RpcError(
                "timeout", f"{method} to {self.address}: no reply within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcError(
                "unreachable", f"{method} to {self.address}: {exc.strerror or exc}"
            ) from None
        finally:
            self._pending.pop(req_id, None)

    async def _read_loop(self) -> None:
        """Read replies and hand each to the call waiting for its id."""
        decoder = FrameDecoder(self.max_frame)
        reason = "connection closed by the server"
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                for message in decoder.feed(data):
                    self._deliver(message)
        except FrameError as exc:
            reason = f"bad reply from the server: {exc}"
            log.info("%s: %s", self.address, reason)
        except (OSError, EOFError) as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            reason = "connection closed"
        finally:
            self._lost = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RpcError("unreachable", f"{self.address}: {reason}"))
            self._writer.close()

    def _deliver(self, message: dict[str, Any]) -> None:
        """Complete the call a reply belongs to."""
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            log.debug("%s: reply for unknown request id %r", self.address, message.get("id"))
            return
        error = message.get("error")
        if error is not None:
            if isinstance(error, dict):
                code = str(error.get("code", "error"))
                text = str(error.get("message", ""))
            else:
                code, text = "error", str(error)
            future.set_exception(RpcError(code, text))
        elif "result" in message:
            future.set_result(message["result"])
        else:
            future.set_exception(RpcError("bad_reply", f"reply from {self.address} has no result"))

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ``unreachable``."""
        if not self._reader_task.done():
            self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    async def __aenter__(self) -> RpcClient:
        """``async with await RpcClient.connect_...(...) as client:``."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close on leaving the block."""
        await self.close()


# --------------------------------------------------------------------------- joining


async def fetch_ca_bundle(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The CA bundle a manager serves (method ``ca_bundle``), fetched over TLS *without*
    verifying the manager: check it with ``check_ca_bundle`` before trusting it."""
    from meshkit.cluster.rpc.pki import client_ssl_context

    client = await RpcClient.connect_tcp(host, port, client_ssl_context(None, None), timeout)
    try:
        result = await client.call(CA_BUNDLE_METHOD, {}, timeout)
    finally:
        await client.close()
    if isinstance(result, dict):
        result = result.get("ca_pem", result.get("bundle"))
    if not isinstance(result, str) or "-----BEGIN CERTIFICATE-----" not in result:
        raise RpcError("bad_reply", f"{client.address} did not send a PEM CA bundle")
    return result.encode("ascii", errors="replace")


def check_ca_bundle(bundle: bytes, token: JoinToken) -> None:
    """Raise TrustError unless the bundle's digest is the one the join token pins."""
    from meshkit.cluster.rpc.pki import TrustError
    from meshkit.cluster.rpc.tokens import ca_digest

    if not hmac.compare_digest(ca_digest(bundle), token.digest):
        raise TrustError(MITM_MESSAGE)
