"""TLS on a socket the server owns: OpenSSL in C, or ssl.SSLObject over two memory BIOs.

`TlsSocket` is the compiled connection of meshkit._fastpath (TlsConn: _tls.pxi over
csrc/tls_conn.c, an SSL object reading and writing the socket itself, the SNI and on-demand
callbacks in C) when the extension is built and MESHKIT_NO_EXTENSIONS is not set; otherwise
its pure-Python twin here, PyTlsSocket. Both have the same face and behaviour:

A TlsSocket stands in for both the connection's socket and its send path (meshkit.web.
sendfile's interface), so the HTTP/1.1 connection code is the same over TLS and plain TCP and
the plain path pays nothing for TLS:

- recv(n): reads ciphertext from the socket, drives the handshake (non-blocking: a partial
  ClientHello just waits for more; the connection's first deadline, the header timeout,
  closes a handshake that stalls) and returns the plaintext there is, raising BlockingIOError
  when there is none yet (as a socket with nothing to read does), OSError when the peer is
  not speaking TLS (after the one-line 400 Go's server answers plain HTTP with);
- send_bytes(fd, data, off) / send_head_and_file(fd, head, file_fd, off, length): encrypt
  and send; a file is read in 64 KiB pieces (no kTLS on this kernel, so no sendfile under
  TLS). Ciphertext the socket does not take waits in `_pending`, and SEND_AGAIN is returned
  until it has gone, so the output path's write jobs finish only once their bytes are out;
- shutdown(how): close_notify, then the socket's own shutdown; close(), fileno().

When the handshake chose `h2` by ALPN and `on_h2` is set, recv() calls it once (the server
moves the connection to meshkit.web.h2conn), hands the plaintext of that read to the feed it
returns and raises BlockingIOError to the HTTP/1.1 connection that had been reading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshkit._ext import load_fastpath
from meshkit.web import lane
from meshkit.web.sendfile import SEND_AGAIN, SEND_DONE, SEND_TRUNCATED

__all__ = [
    "COMPILED",
    "HTTP_TO_HTTPS",
    "PyTlsSocket",
    "TlsSocket",
    "attach_listener",
    "tls_lane",
]

log = logging.getLogger("meshkit.web")

_CHUNK = 65536  # plaintext per TLS write (four 16 KiB records); file bytes per pread
# What Go's net/http answers plain HTTP sent to an HTTPS port with.
HTTP_TO_HTTPS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_HELLO_MAX = 16384 + 5  # a ClientHello in one record (whose SNI we read) is no longer
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO", b"DELET", b"PATCH", b"CONNE")


class PyTlsSocket:
    """One server-side TLS connection on a non-blocking socket (see the module)."""

    compiled = False
    tls = True

    __slots__ = (
        "_held",
        "_hello",
        "_in",
        "_obj",
        "_out",
        "_pending",
        "_raw",
        "_ready",
        "_waiting",
        "_wclosed",
        "on_demand",
        "on_h2",
        "on_resume",
    )

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self._raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._pending = b""  # ciphertext the socket has not taken yet
        self._ready = False  # the handshake is done
        self._wclosed = False  # close_notify sent: what arrives now is discarded by the caller
        # called once when ALPN chose h2: takes the connection over, returns where the
        # plaintext goes from then on (see the module)
        self.on_h2: Callable[[PyTlsSocket], Callable[[bytes], None]] | None = None
        # on-demand TLS: asked with the ClientHello's SNI before the handshake; a future
        # means "wait": the ClientHello is held until it is done, then on_resume() is called
        # (the connection reads again, and recv() goes on with what was held)
        self.on_demand: Callable[[str], Any] | None = None
        self.on_resume: Callable[[], None] | None = None
        self._hello = b""  # ClientHello bytes read before its SNI could be seen
        self._held: bytes | None = None  # held while an on-demand certificate is obtained
        self._waiting = False  # ...and the wait is not over

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def selected_alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def version(self) -> str | None:
        return self._obj.version() if self._ready else None

    def session_reused(self) -> bool:
        return bool(self._obj.session_reused)

    # -- reading

    def recv(self, n: int) -> bytes:
        if self._held is not None:
            if self._waiting:  # what else the client sends waits behind its ClientHello
                more = self._raw.recv(n)
                if not more:
                    return more
                self._held += more
                raise BlockingIOError
            data, self._held = self._held, None  # the wait for a certificate is over
            with contextlib.suppress(BlockingIOError, InterruptedError):
                data += self._raw.recv(n)
        else:
            data = self._raw.recv(n)  # BlockingIOError and OSError go to the caller as they are
        if not data:
            return data
        if self._wclosed:
            return self._recv_closing(data)
        obj = self._obj
        taker = None
        if self.on_demand is not None and not self._ready:
            data = self._on_demand_hello(data)
        if not self._ready:
            if data[:5] in _HTTP_STARTS and self._obj.pending() == 0 and not self._in.pending:
                self._answer_plain_http()
                raise ConnectionAbortedError("plain HTTP sent to an HTTPS port")
            self._in.write(data)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                raise BlockingIOError from None
            except ssl.SSLError as exc:
                self._flush_quietly()  # the alert, if OpenSSL made one
                log.debug("TLS handshake failed: %s", exc)
                raise ConnectionAbortedError(f"TLS handshake failed: {exc}") from None
            self._ready = True
            if self.on_h2 is not None and obj.selected_alpn_protocol() == "h2":
                taker = self.on_h2(self)
        else:
            self._in.write(data)
        parts = []
        inbio = self._in
        while True:
            try:
                chunk = obj.read(n)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break  # close_notify: the socket's EOF follows
            except ssl.SSLError as exc:
                log.debug("TLS read failed: %s", exc)
                raise ConnectionAbortedError(f"TLS error: {exc}") from None
            if not chunk:
                break
            parts.append(chunk)
            if not inbio.pending and not obj.pending():
                break  # all read: another read would only raise SSLWantReadError
        if self._out.pending or self._pending:
            if taker is None:
                self._flush()  # TLS 1.3 session tickets, alerts
            else:
                # the socket is h2's now: a failed send is for its next write to meet (an
                # OSError here would make the HTTP/1.1 reader close it under h2's feet)
                self._flush_quietly()
        if taker is not None:
            if parts:
                taker(b"".join(parts))
            raise BlockingIOError
        if not parts:
            raise BlockingIOError
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _recv_closing(self, data: bytes) -> bytes:
        """After our close_notify (the caller counts and discards what comes): the client's
        close_notify, or any TLS error, is its EOF. A client may reset the socket right after
        it (wrk closes with our close_notify unread: the kernel sends RST, and the event loop
        drops the reader without a call), so waiting for the socket's own EOF would hold the
        connection until the linger deadline."""
        if not self._ready:
            return data
        self._in.write(data)
        parts = []
        while True:
            try:
                chunk = self._obj.read(_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, ValueError):
                return b""
            if not chunk:
                return b""
            parts.append(chunk)
        if not parts:
            raise BlockingIOError
        return b"".join(parts)

    def _on_demand_hello(self, data: bytes) -> bytes:
        """Look at the ClientHello's SNI before OpenSSL does (on-demand TLS); the bytes to
        go on with, or BlockingIOError while they wait (see __init__)."""
        hello = self._hello + data
        name = client_hello_sni(hello)
        if name is None and len(hello) < _HELLO_MAX:
            self._hello = hello  # not whole yet
            raise BlockingIOError
        self._hello = b""
        ask = self.on_demand
        self.on_demand = None  # once per connection
        fut = ask(name) if ask is not None and name else None
        if fut is None or fut.done():
            return hello
        self._held = hello
        self._waiting = True
        resume = self.on_resume

        def done(_f: Any) -> None:
            self._waiting = False
            if resume is not None and self._raw.fileno() != -1:  # (not closed meanwhile)
                resume()

        fut.add_done_callback(done)
        raise BlockingIOError

    def _answer_plain_http(self) -> None:
        try:
            self._raw.send(HTTP_TO_HTTPS)
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- writing

    def _flush(self) -> bool:
        """Send the ciphertext there is; whether all of it went (OSError on a dead socket)."""
        out = self._out
        if out.pending:
            more = out.read()
            self._pending = self._pending + more if self._pending else more
        pending = self._pending
        if not pending:
            return True
        try:
            sent = self._raw.send(pending)
        except (BlockingIOError, InterruptedError):
            return False
        self._pending = pending[sent:] if sent < len(pending) else b""
        return not self._pending

    def _flush_quietly(self) -> None:
        with contextlib.suppress(OSError):
            self._flush()

    def send_bytes(self, fd: int, data: Any, off: int) -> tuple[int, int]:
        if (self._pending or self._out.pending) and not self._flush():
            return 0, SEND_AGAIN
        total = len(data)
        pos = off
        view = memoryview(data)
        write = self._obj.write
        while pos < total:
            end = pos + _CHUNK if total - pos > _CHUNK else total
            write(view[pos:end])
            pos = end
            if not self._flush():
                return pos - off, SEND_AGAIN
        return pos - off, SEND_DONE

    def send_head_and_file(
        self, fd: int, head: bytes, file_fd: int, offset: int, length: int
    ) -> tuple[int, int]:
        if not self._flush():
            return 0, SEND_AGAIN
        sent = 0
        write = self._obj.write
        if head:
            write(head)
            sent = len(head)
            if not self._flush():
                return sent, SEND_AGAIN
        left = length
        while left > 0:
            chunk = os.pread(file_fd, _CHUNK if left > _CHUNK else left, offset)
            if not chunk:
                return sent, SEND_TRUNCATED
            write(chunk)
            got = len(chunk)
            sent += got
            offset += got
            left -= got
            if not self._flush():
                return sent, SEND_AGAIN
        return sent, SEND_DONE

    # -- closing

    def shutdown(self, how: int) -> None:
        if not self._wclosed:
            self._wclosed = True
            if self._ready:
                # SSLWantReadError: the peer's close_notify is not awaited
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._obj.unwrap()
                self._flush_quietly()
        self._raw.shutdown(how)

    def close(self) -> None:
        # the server's callbacks hold the connection that holds this object: let go of
        # them, so that both are freed by reference counting, not by a GC pass
        self.on_h2 = self.on_demand = self.on_resume = None
        self._raw.close()


_FAST = load_fastpath()
_CONN = getattr(_FAST, "TlsConn", None)
# TlsSocket is the compiled one, unless the extension's OpenSSL is not the interpreter's own
# (tls_same_openssl): then the twin, whose ssl objects never leave their library
COMPILED = _CONN is not None and bool(_FAST.tls_same_openssl())  # type: ignore[union-attr]
if TYPE_CHECKING:
    TlsSocket = PyTlsSocket
else:
    TlsSocket = _CONN if COMPILED else PyTlsSocket


_TLS_LANE = getattr(_FAST, "TlsLane", None) if COMPILED else None


def tls_lane(conn: Any, server: Any, tsock: Any) -> Any:
    """The compiled reader of an HTTPS connection (meshkit._fastpath.TlsLane: answers
    remembered responses without a Python frame once the handshake is done), or None: the
    connection reads in Python (Connection._on_readable, its twin), as it does with the twin
    TLS socket and with MESHKIT_LANE=0 (meshkit.web.lane)."""
    if _TLS_LANE is None or type(tsock) is not _CONN or lane.LANE is None:
        return None
    return _TLS_LANE(conn, server, tsock)


def attach_listener(ctx: ssl.SSLContext, listener: Any, on_sni: Callable[..., Any]) -> None:
    """Make the port's default context choose each handshake's certificate by its server
    name through `listener` (meshkit.web.tlsctx.TlsListener): in C for the compiled
    TlsSocket (and on-demand TLS there), with the ssl module's sni_callback `on_sni` for the
    twin."""
    if COMPILED:
        _FAST.tls_attach(ctx, listener)  # type: ignore[union-attr]
    else:
        ctx.sni_callback = on_sni


# -- an upgraded connection (websocket) over TLS


async def _wait_fd(loop: Any, fd: int, writing: bool) -> None:
    fut = loop.create_future()
    if writing:
        add, remove = loop.add_writer, loop.remove_writer
    else:
        add, remove = loop.add_reader, loop.remove_reader

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    try:
        await fut
    finally:
        remove(fd)


async def _tls_to_plain(loop: Any, tsock: TlsSocket, inner: socket.socket) -> None:
    fd = tsock.fileno()
    try:
        while True:
            await _wait_fd(loop, fd, False)
            try:
                data = tsock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue  # a TLS record not whole yet, or a ticket: no plaintext
            if not data:
                break
            await loop.sock_sendall(inner, data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        inner.shutdown(socket.SHUT_WR)


async def _plain_to_tls(loop: Any, tsock: TlsSocket, inner: socket.socket) -> None:
    fd = tsock.fileno()
    try:
        while True:
            data = await loop.sock_recv(inner, _CHUNK)
            if not data:
                break
            off = 0
            while True:
                sent, status = tsock.send_bytes(fd, data, off)
                off += sent
                if status == SEND_DONE:
                    break
                await _wait_fd(loop, fd, True)
        while not tsock._flush():
            await _wait_fd(loop, fd, True)
        tsock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def bridge(tsock: TlsSocket) -> socket.socket:
    """A plain socket standing in for a TLS connection after an upgrade (a websocket the
    proxy relays): a socketpair whose other end this module keeps encrypting into and
    decrypting from `tsock`, until both directions have ended (then both are closed). The
    upgrade taker gets a real socket, so it relays the same way over TLS as over plain TCP."""
    import asyncio

    loop = asyncio.get_running_loop()
    outer, inner = socket.socketpair()
    inner.setblocking(False)
    outer.setblocking(False)

    async def run() -> None:
        try:
            await asyncio.gather(
                _tls_to_plain(loop, tsock, inner), _plain_to_tls(loop, tsock, inner)
            )
        finally:
            inner.close()
            tsock.close()

    task = loop.create_task(run())
    _bridges.add(task)
    task.add_done_callback(_bridges.discard)
    return outer


_bridges: set[Any] = set()  # running bridges (held until done)


def client_hello_sni(data: bytes) -> str | None:
    """The server name of a TLS ClientHello at the start of `data`: None while the first
    record is not whole, "" when there is none (or the bytes are no ClientHello)."""
    if len(data) < 5:
        return None if data[:1] in (b"", b"\x16") else ""
    if data[0] != 0x16:
        return ""
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None
    p = 5
    try:
        if data[p] != 1:  # handshake type ClientHello
            return ""
        p += 4 + 2 + 32  # handshake header, client_version, random
        p += 1 + data[p]  # session id
        p += 2 + int.from_bytes(data[p : p + 2], "big")  # cipher suites
        p += 1 + data[p]  # compression methods
        ext_end = p + 2 + int.from_bytes(data[p : p + 2], "big")
        p += 2
        while p + 4 <= min(ext_end, end):
            kind = int.from_bytes(data[p : p + 2], "big")
            size = int.from_bytes(data[p + 2 : p + 4], "big")
            p += 4
            if kind == 0:  # server_name: list length, type 0 (host_name), length, name
                q = p + 2
                if data[q] == 0:
                    length = int.from_bytes(data[q + 1 : q + 3], "big")
                    return data[q + 3 : q + 3 + length].decode("ascii", "replace")
                return ""
            p += size
    except IndexError:
        return ""
    return ""
