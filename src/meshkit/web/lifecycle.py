"""The side of a server connection that carries out its state changes: firing the
transitions of meshkit.web.connstate, deadlines, closing (gracefully or at once) and handing
the socket to an upgrade taker.

Lifecycle is a base of meshkit.web.connection.Connection (one object, no extra call on the
hot path); the decisions themselves are in connstate's table.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections import deque
from typing import Any

from meshkit.web.connstate import CLOSE_IF_IDLE, PARTS, ConnState, Event, transition
from meshkit.web.output import (
    DL_BODY,
    DL_FIRST,
    DL_HEAD,
    DL_IDLE,
    DL_LINGER,
    DL_NONE,
    _cancel,
)
from meshkit.web.pipeline import Pipeline
from meshkit.web.reqbody import RequestBody
from meshkit.web.tlssock import TlsSocket, bridge

log = logging.getLogger("meshkit.web")

_LINGER = 2.0  # seconds to discard input after a closing response

_HEAD = ConnState.HEAD
# what the timeout sweep probes on a connection that watches its socket: those waiting for
# input (see Lifecycle.probe)
_WAITING = (DL_IDLE, DL_FIRST, DL_HEAD)
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
PEER_ALIVE, PEER_EOF, PEER_RESET = 0, 1, 2
_CLOSING_BODY = ConnState.CLOSING_BODY
_CLOSING = ConnState.CLOSING
_LINGERING = ConnState.LINGERING
_UPGRADED = ConnState.UPGRADED


class Lifecycle(Pipeline):
    """State changes, deadlines and closing of a connection."""

    __slots__ = PARTS  # the fields are Connection's

    _waiting_body: RequestBody | None
    _parser: Any  # Connection's httptools parser, let go of once closed
    _raw: socket.socket  # the plain socket (under the TLS wrapper on HTTPS): probe peeks it

    @property
    def state(self) -> ConnState:
        return self._state

    def _reader(self) -> Any:
        """The socket's reader callback (provided by Connection)."""
        raise NotImplementedError

    def _fire(self, event: Event) -> int:
        """Move to the state that `event` leads to; the actions to take (connstate)."""
        self._state, actions = transition(self._state, event)
        return actions

    def _max_discard(self) -> int:
        return self._server._max_discard

    def _busy(self) -> bool:
        return bool(self._queue or self._out or self._streaming)

    def _went_idle(self) -> None:
        """Nothing is being answered: wait for the next request (or close if asked to)."""
        state = self._state
        if state >= _LINGERING:
            return
        in_message = _HEAD <= state <= _CLOSING_BODY
        if not in_message and (state == _CLOSING or self._server._shutting):
            self._close_gracefully()
            return
        if in_message:
            if state != _HEAD:
                self._deadline = self._loop.time() + self._server._read_timeout
                self._dkind = DL_BODY
        else:
            self._deadline = self._server._now + self._server._idle_timeout
            self._dkind = DL_IDLE

    def _body_waiting(self, body: RequestBody, waiting: bool) -> None:
        if waiting:
            self._waiting_body = body
            self._deadline = self._loop.time() + self._server._read_timeout
            self._dkind = DL_BODY
            self._update_reading()
        elif self._waiting_body is body:
            self._waiting_body = None
            if self._dkind == DL_BODY:
                self._dkind = DL_NONE

    def _close_when_done(self) -> None:
        if self._state >= _LINGERING:
            return
        if self._fire(Event.CLOSE_WHEN_DONE) & CLOSE_IF_IDLE and not self._busy():
            self._close_gracefully()
        else:
            self._update_reading()

    def _close_gracefully(self, whole: bool = False) -> None:
        """Shut down our side, then discard input for a moment before closing (so that the
        client reads the response rather than a reset: RFC 9112 9.6).

        `whole`: the request just answered was the last and was read whole, with nothing
        after it in our buffers (a cache hit: the read was exactly its head). Then, as
        nginx's `lingering_close on`, the socket is closed right after the shutdown unless
        the kernel already holds more input from the client (closing over unread input
        sends the reset that lingering avoids): no wait for the client's close, no second
        wake-up per connection."""
        if self._state >= _LINGERING:
            return
        self._drop_slots()
        self._fire(Event.LINGER)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._abort()
            return
        if whole and not self._out:
            try:
                more = self._raw.recv(1, _PEEK)  # b"": the client has closed already
            except OSError:  # nothing yet (EAGAIN), or a reset: nothing to protect
                more = b""
            if not more:
                self._abort()
                return
        self._deadline = self._loop.time() + min(_LINGER, self._server._idle_timeout)
        self._dkind = DL_LINGER
        self._update_reading()

    def check_deadline(self, now: float) -> None:
        if self._out and now - self._write_since > self._server._write_timeout:
            log.debug("client %s:%s stopped reading; closing", self._remote_addr, self._remote_port)
            self._abort()
            return
        kind = self._dkind
        if kind == DL_NONE or now < self._deadline:
            return
        if kind == DL_HEAD:
            if self._busy() or self._state != _HEAD:
                self._close_when_done()
            else:
                self._refuse_request(408)
        elif kind == DL_BODY:
            body = self._waiting_body
            if body is not None:
                body.fail(TimeoutError("timed out reading the request body"))
            self._abort()
        else:
            self._abort()

    def probe(self) -> None:
        """Called by the server's sweep (about once a second): has the client gone away
        while the loop could not tell us?

        A connection that does not watch its socket (the last request of the connection is
        being answered, pipelining or body buffering paused reading) never sees the client's
        reset, so it would stay (fd, memory, the handler and its upstream) until the
        response is done or a timeout ends it; a reset there aborts the connection now (an
        EOF alone does not: a client may half-close and still read the response). One
        waiting for input (idle, a head arriving) runs its reader on a reset or EOF the
        reader has not been called for, the way the loop would have (an event loop may drop
        the watch on a socket error without calling the reader: libuv's poll handles stop
        on POLLERR).
        """
        state = self._state
        if state >= _LINGERING:
            return  # the linger deadline (at most _LINGER s) ends it
        reading = self._reading
        if reading and self._dkind not in _WAITING:
            return
        seen = peer_state(self._raw)
        if seen == PEER_ALIVE:
            return
        if reading:
            self._reader()()
        elif seen == PEER_RESET:
            log.debug("client %s:%s reset the connection", self._remote_addr, self._remote_port)
            self._abort()

    def begin_shutdown(self) -> None:
        if self._state >= _LINGERING:
            return
        if not self._busy():
            self._abort()  # idle, or a request head that has not reached a handler yet
        else:
            self._fire(Event.CLOSE_WHEN_DONE)

    def _unwatch(self) -> None:
        """Stop the loop watching the socket (reading and writing)."""
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _hand_over(self, upgrade: Any) -> None:
        """Let go of the socket (without closing it) and run the upgrade taker on it."""
        rest = self._upgrade_rest or b""
        self._unwatch()
        self._fire(Event.HAND_OVER)
        self._drop_slots()
        sock = self._sock
        if isinstance(sock, TlsSocket):  # the taker relays a plain socket: bridge the TLS
            sock = bridge(sock)
        self._server._conn_closed(self)
        self._lane = None  # the lane refers to this connection (meshkit.web.lane)
        self._parser = None  # (as in _abort)
        self._loop.create_task(_run_upgrade(upgrade, sock, rest))

    def _abort(self) -> None:
        """Close the socket now and fail whatever was still in progress."""
        if self._state >= _UPGRADED:
            return
        self._fire(Event.ABORT)
        self._unwatch()
        with contextlib.suppress(OSError):
            self._sock.close()
        out, self._out = self._out, deque()
        for job in out:
            self._job_done(job, False)
        self._drop_slots()
        stream = self._stream_task
        if stream is not None and not stream.done():
            # it may be waiting for the upstream, not for us: stop it now, which releases
            # its upstream connection, rather than at the upstream's next piece
            _cancel(self._loop, stream)
        if self._body is not None:
            self._body.fail(ConnectionResetError("connection closed"))
        if self._waiting_body is not None:
            self._waiting_body.fail(ConnectionResetError("connection closed"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("connection closed"))
            drain.exception()  # retrieved: nobody may be waiting any more
        self._lane = None  # the lane refers to this connection (meshkit.web.lane)
        # so does the httptools parser (its callbacks are this connection's methods): let go
        # of it, so that a closed connection is freed by reference counting, not by a GC pass
        # (each pass on a busy server walks every live object; see bench/web_tls.py handshake)
        self._parser = None
        self._server._conn_closed(self)


async def _run_upgrade(upgrade: Any, sock: socket.socket, rest: bytes) -> None:
    try:
        await upgrade(sock, rest)
    except Exception:
        log.exception("upgraded connection failed")
        with contextlib.suppress(OSError):
            sock.close()


def peer_state(sock: socket.socket) -> int:
    """What a socket's peer did, without taking any input: PEER_RESET (an error is pending:
    a reset, or the connection timed out), PEER_EOF (it closed its side) or PEER_ALIVE
    (input waits, or nothing yet): one non-blocking recv(MSG_PEEK), about 1 us. `sock` is
    the plain socket under any TLS wrapper (whose recv would read)."""
    try:
        data = sock.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return PEER_ALIVE
    except OSError as exc:
        return PEER_ALIVE if exc.errno in (errno.ENOTSOCK, errno.EBADF) else PEER_RESET
    return PEER_ALIVE if data else PEER_EOF


def peer_state_fd(fd: int) -> int:
    """peer_state for a connection that keeps no plain socket at hand (an HTTP/2 one): the
    same recv on its fd (a few us more for the socket object, not closed: detached)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        return peer_state(sock)
    finally:
        sock.detach()  # the fd stays the connection's
