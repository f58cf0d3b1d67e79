"""Server-side TLS whose handshake runs off the event loop.

A manager accepts a TLS connection for every joining node (the join, without a client
certificate) and another for its heartbeats (mutual TLS). The server's share of a mutual-TLS
handshake is about 1 ms of CPU (ECDHE, an ECDSA signature, the client's chain verified); done
by asyncio's SSL transport it runs inside the loop, and a burst of joins stacks dozens of them
into one loop turn (at 5,000 nodes joining, TLS handshakes were the largest single item of the
leader's loop CPU). Here the handshake steps run in a small thread pool: OpenSSL releases the
GIL in ``SSL_do_handshake``, so the loop keeps answering heartbeats and raft while a handshake
is computed. Once it is done, the connection's records are encrypted and decrypted on the loop
(symmetric, cheap) by a plain ``asyncio.Transport`` over the TCP transport.

The loop thread and a handshake thread never touch the same ``SSLObject`` or memory BIO at the
same time: bytes that arrive while a step runs wait in a list and are fed after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

HANDSHAKE_THREADS = 2
"""Threads doing handshakes for the whole process (the machine's cores do the rest)."""

HANDSHAKE_NICE = 10
"""How much nicer than the process the handshake threads are. On a busy core the kernel shares
the CPU fairly between runnable threads: at the same niceness two threads busy with a burst of
handshakes took two thirds of the core from the loop's thread, and the loop fell further behind
than when it did the handshakes itself. Ten steps nicer, the loop's thread gets about 90 % of a
contended core and the handshakes the rest (and all of an idle one)."""

_READ_SIZE = 256 * 1024

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def handshake_executor() -> ThreadPoolExecutor:
    """The process's handshake pool (made on first use; its threads are daemon-like workers
    that Python joins at exit)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                HANDSHAKE_THREADS, thread_name_prefix="tls-handshake", initializer=_be_nicer
            )
        return _executor


def _be_nicer() -> None:
    """In a new handshake thread: lower its priority (Linux: niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(now + HANDSHAKE_NICE, 19))


def handshake_step(sslobj: ssl.SSLObject) -> bool:
    """One step of a server handshake over memory BIOs: True when it is complete, False when
    it needs more bytes from the client. Runs in a pool thread; raises the handshake's error."""
    try:
        sslobj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


class TlsTransport(asyncio.Transport):
    """The application's view of an established TLS connection: writes are encrypted onto
    the TCP transport, everything else (flow control, addresses) is the TCP transport's."""

    def __init__(
        self,
        raw: asyncio.Transport,
        sslobj: ssl.SSLObject,
        outgoing: ssl.MemoryBIO,
        owner: TlsServerProtocol,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._sslobj = sslobj
        self._outgoing = outgoing
        self._owner: TlsServerProtocol | None = owner  # None once the connection is lost
        self._app: asyncio.Protocol | None = None  # the application's, kept when detached
        self._context = context
        self._closing = False

    def detach(self) -> None:
        """The connection is lost: forget the protocol that fed this transport, so that the
        protocol, this transport, the application's protocol and the handshake's future form
        no cycle and are freed by reference counting when the connection's task ends. A
        manager freezes what lives a while out of the cyclic collector's way and never runs
        a full collection (raft/gcpauses.py): each closed connection in a cycle was 32 objects
        kept for good."""
        if self._owner is not None:
            self._app = self._owner.app
            self._owner = None

    def flush(self) -> None:
        """Send what the TLS engine has produced (records, alerts, key-update answers)."""
        data = self._outgoing.read()
        if data and not self._raw.is_closing():
            self._raw.write(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        try:
            self._sslobj.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self.flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def close(self) -> None:
        """Send close_notify, then close the TCP connection once its buffer is written."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._sslobj.unwrap()  # memory BIOs: raises SSLWantReadError after close_notify
        self.flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._sslobj.getpeercert()
        if name == "cipher":
            return self._sslobj.cipher()
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self._owner is not None:
            self._owner.paused = True
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        owner = self._owner
        if owner is None:
            return  # lost: nothing more to read
        owner.paused = False
        self._raw.resume_reading()
        asyncio.get_running_loop().call_soon(owner.read_records)

    def is_reading(self) -> bool:
        return self._owner is not None and not self._owner.paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if self._owner is not None:
            self._owner.app = protocol  # type: ignore[assignment]
        else:
            self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        app = self._owner.app if self._owner is not None else self._app
        assert app is not None  # set before this transport is handed out
        return app


class TlsServerProtocol(asyncio.Protocol):
    """The TCP side: drives the handshake in the pool, then decrypts records for ``app``.

    ``done`` gets the established ``TlsTransport`` (after ``app.connection_made``), or the
    handshake's error (``asyncio.TimeoutError`` after ``timeout`` seconds)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        timeout: float,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app_factory = app_factory
        self._timeout = timeout
        self._executor = executor or handshake_executor()
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[TlsTransport] = self._loop.create_future()
        self.app: asyncio.Protocol | None = None
        self.paused = False
        self._raw: asyncio.Transport | None = None
        self._tls: TlsTransport | None = None
        self._pending: list[bytes] = []  # bytes that came while a handshake step ran
        self._stepping = False
        self._lost = False
        self._eof = False  # the client's close_notify was read
        self._timer: asyncio.TimerHandle | None = None

    # -- handshake ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._timer = self._loop.call_later(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        if self._tls is None:
            self._fail(asyncio.TimeoutError("TLS handshake timed out"))

    def _fail(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.done.done():
            self.done.set_exception(exc)
        if self._raw is not None:
            self._raw.abort()

    def _step(self) -> None:
        for chunk in self._pending:
            self._incoming.write(chunk)
        self._pending.clear()
        self._stepping = True
        if self._raw is not None:
            self._raw.pause_reading()  # what arrives meanwhile waits in the kernel, not here
        fut = self._loop.run_in_executor(self._executor, handshake_step, self._sslobj)
        fut.add_done_callback(self._stepped)

    def _stepped(self, fut: asyncio.Future[bool]) -> None:
        self._stepping = False
        if self._lost or self.done.done():
            return  # timed out, or the client went away, while the step ran
        if self._raw is not None and not self._raw.is_closing():
            self._raw.resume_reading()
        exc = fut.exception()
        if exc is not None:
            self._flush_raw()  # the alert that says why
            self._fail(exc)
            return
        self._flush_raw()
        if fut.result():
            self._established()
        elif self._pending:
            self._step()

    def _flush_raw(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    def _established(self) -> None:
        assert self._raw is not None
        if self._timer is not None:
            self._timer.cancel()
        self._tls = TlsTransport(self._raw, self._sslobj, self._outgoing, self, self._context)
        self.app = self._app_factory()
        self.app.connection_made(self._tls)
        self.done.set_result(self._tls)
        for chunk in self._pending:  # the client's first records, sent after its Finished
            self._incoming.write(chunk)
        self._pending.clear()
        self.read_records()

    # -- established -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._tls is None:
            self._pending.append(data)
            if not self._stepping and not self.done.done():
                self._step()
            return
        self._incoming.write(data)
        self.read_records()

    def read_records(self) -> None:
        """Decrypt what has arrived and hand it to the application (unless it paused us)."""
        tls, app = self._tls, self.app
        if tls is None or app is None or self._lost or self._eof:
            return
        while not self.paused:
            try:
                chunk = self._sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                chunk = b""
            except ssl.SSLError as exc:
                tls.flush()
                self._lost = True
                tls.abort()
                app.connection_lost(exc)
                return
            if not chunk:  # the client's close_notify: the end of its data, said once
                tls.flush()
                self._eof = True
                if not app.eof_received():
                    tls.close()  # connection_lost follows from the TCP side
                return
            app.data_received(chunk)
        tls.flush()

    def eof_received(self) -> bool | None:
        if self._tls is None:
            self._fail(ConnectionResetError("the client closed the connection in the handshake"))
            return False
        if self.app is not None and not self._lost and not self._eof:
            self._eof = True
            return self.app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._app_factory = _no_app  # its closure holds the application's protocol
        if self._tls is None:
            if not self.done.done():
                self.done.set_exception(
                    exc or ConnectionResetError("the connection closed in the TLS handshake")
                )
            self._lost = True
            return
        if self._lost:
            self._tls.detach()
            return
        self._lost = True
        if self.app is not None:
            self.app.connection_lost(exc)
        self._tls.detach()  # no cycle left through the transport (see there)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()


def _no_app() -> asyncio.Protocol:
    raise RuntimeError("the connection is closed")


async def accept_tls(
    sock: Any,
    context: ssl.SSLContext,
    app_factory: Callable[[], asyncio.Protocol],
    timeout: float,
) -> TlsTransport:
    """Serve TLS on an accepted socket with the handshake done in the pool; return the
    established transport (``app_factory()``'s protocol is connected to it). Raises the
    handshake's error, or ``asyncio.TimeoutError`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    proto = TlsServerProtocol(context, app_factory, timeout)
    raw, _ = await loop.connect_accepted_socket(lambda: proto, sock)
    try:
        return await proto.done
    except BaseException:
        raw.abort()
        raise
