"""The TCP relay engine: moves bytes both ways between (client, backend) socket pairs.

The L4 ingress accepts clients with ``relay.accept(listen_fd)`` and hands each one to
``relay.connect(client_fd, ip, port, ...)``, which connects to the backend and relays once
connected (``relay.add`` takes two sockets that are already connected).
The relay owns an epoll fd; the owner registers it with ``loop.add_reader(relay.fileno(), ...)``
and calls ``relay.poll(loop.time())`` when it is readable and from a ~1 s timer (idle expiry).
The relay never runs a thread of its own.

``PyRelay`` is the pure-Python twin of the compiled ``meshkit._fastpath.Relay`` (csrc/relay.c)
and follows the same steps, so both give the same results; ``make_relay`` picks one. The
twin is in three parts: ``relay_flow.PairBook`` (pairs, ids, how a pair ends),
``relay_connect.Connector`` (add, accept, connect, retry, serve) and here ``PyRelay`` itself,
the epoll poll and the byte pump.

How it works (both implementations):

- Sockets are registered once, edge-triggered, for IN|OUT|RDHUP. The engine keeps its own
  "may be readable/writable" flags and clears one only on EAGAIN or a short read/write (after
  which the kernel signals a new edge), so ping-pong traffic costs no epoll_ctl calls.
- Bytes are sent on as soon as they are read; only what the destination did not take waits
  in a per-direction buffer, and while it waits the source is not read (at most ``bufsize``
  bytes per direction).
- The C engine alone moves bulk directions of TCP pairs with splice(2) through a pool of
  pipes (a pipe holds at most ``bufsize`` bytes, so the same bound holds); the bytes on the
  wire, the counts, half-close and errors are the same as here, where every byte is copied.
  By default only pairs whose legs both run through NICs: over loopback and veth splicing
  costs the receivers on this host more than it saves the relay, so there (and with
  ``MESHKIT_RELAY_SPLICE=0``) it copies a bulk direction in reads of up to 256 KiB;
  ``MESHKIT_RELAY_SPLICE=1`` splices every TCP pair (see csrc/relay.c).
- A pair that used its read budget in one poll is carried to the next one, and an eventfd in
  the epoll set keeps ``fileno()`` readable until then, so one busy pair cannot starve the loop.
- ``connect`` registers the connecting backend socket like any other: its first EPOLLOUT (or
  ERR/HUP) edge ends the connect and SO_ERROR says how it went. A failed connect, one that
  times out (ETIMEDOUT) and one that fails at once (socket()/connect() errors, reported by the
  next poll) all come back from ``poll`` as ``(pair_id, 0, 0, "connect")``: the backend socket
  is closed, the client stays open in the engine, and the pair waits, FAILED, for ``retry``
  (another backend) or ``close``. ``connect_error(pair_id)`` tells the errno.

The fast lane, ``serve(listen_fd, table, dst_ip, dst_port, ...)``, does the whole common path
of a new connection inside the engine: accept, ``table.lookup`` of the flow key built from the
peer's address, and the connect to the backend's address (``table.set_address``). A client
for which no backend is up (or whose backend has no address) is closed at once and counted.
When a served pair finishes (done, reset, idle, closed, close_all, close_backend) the engine
releases its flow and adds its bytes to its backend in the table before reporting it. A
served pair whose connect failed is reported as usual and its flow is then the owner's (it
releases it and places the retry with ``table.lookup``/``assign``) until ``retry(...,
backend_id=...)`` hands it back; so the engine releases nothing for a FAILED pair.
``flow_of(pair_id)`` gives a served pair's (key, backend id). The compiled Relay serves only
with the compiled ConnTable, PyRelay only with PyConnTable.
"""

from __future__ import annotations

import select
import socket
from typing import Protocol

from meshkit._ext import load_fastpath
from meshkit.l4.relay_connect import Connector
from meshkit.l4.relay_flow import (
    _DONE,
    _FAILED,
    _HUP_EVENTS,
    _IDLE,
    _MAX_EVENTS,
    _MORE,
    _READ_BUDGET,
    _READ_EVENTS,
    _RECV_FLAGS,
    _RESET,
    _SEND_FLAGS,
    _WRITE_EVENTS,
    Accepted,
    Finished,
    _Pair,
)
from meshkit.lb.conntable import FlowKey, PyConnTable

__all__ = ["Accepted", "Finished", "PyRelay", "RelayLike", "make_relay"]


class RelayLike(Protocol):
    """The API shared by the compiled Relay and PyRelay."""

    def fileno(self) -> int: ...

    def add(
        self,
        client_fd: int,
        backend_fd: int,
        idle_timeout: float,
        now: float,
        preamble: bytes = b"",
    ) -> int: ...

    def poll(self, now: float) -> list[Finished]: ...

    def close(self, pair_id: int) -> Finished | None: ...

    def stats(self, pair_id: int) -> tuple[int, int] | None: ...

    def __len__(self) -> int: ...

    def close_all(self) -> list[Finished]: ...

    def accept(self, listen_fd: int, max_count: int = 64) -> list[Accepted]: ...

    def connect(
        self,
        client_fd: int,
        ip: str,
        port: int,
        idle_timeout: float,
        now: float,
        preamble: bytes = b"",
        connect_timeout: float = 3.0,
    ) -> int: ...

    def connect_error(self, pair_id: int) -> int: ...

    def retry(
        self,
        pair_id: int,
        ip: str,
        port: int,
        now: float,
        preamble: bytes = b"",
        connect_timeout: float = 3.0,
        *,
        backend_id: int | None = None,
    ) -> None: ...

    def serve(
        self,
        listen_fd: int,
        table: PyConnTable,
        dst_ip: str,
        dst_port: int,
        idle_timeout: float,
        connect_timeout: float,
        now: float,
        max_count: int = 64,
    ) -> tuple[int, int]: ...

    def flow_of(self, pair_id: int) -> tuple[FlowKey, int] | None: ...

    def close_backend(self, table: PyConnTable, backend_id: int) -> list[Finished]: ...

    def live_bytes(self, table: PyConnTable) -> dict[int, int]: ...


class PyRelay(Connector):
    """Pure-Python relay engine with the same API and behaviour as the compiled Relay."""

    def poll(self, now: float) -> list[Finished]:
        finished: list[Finished] = []
        queue = self._carry
        self._carry = []
        for ev_fd, events in self._ep.poll(0, _MAX_EVENTS):
            ref = self._by_fd.get(ev_fd)
            if ref is None:
                continue
            pid, side = ref
            pair = self._pairs[pid]
            assert pair is not None
            if events & _READ_EVENTS:
                pair.readable[side] = True
            if events & _WRITE_EVENTS:
                pair.writable[side] = True
            if events & _HUP_EVENTS:
                pair.hup[side] = True
            if events & select.EPOLLERR and (side == 0 or not pair.state):
                # Caught here because no read or write may be pending to report it.
                # A connecting backend's SO_ERROR is the connect's result: _connect_done.
                try:
                    if pair.socks[side].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        pair.failed = True
                except OSError:
                    pair.failed = True
            # Not relaying: the flags above wait for the connect; only the backend has news.
            if pair.state and (side == 0 or pair.state == _FAILED):
                continue
            if not pair.queued:
                pair.queued = True
                queue.append((pid, pair))
        for pid, pair in queue:
            if self._pairs[pid] is not pair:
                continue  # finished (and maybe replaced) since it was queued
            pair.queued = False
            if pair.state and not self._connect_done(pid, pair, now, finished):
                continue
            state = self._pump_pair(pair, now)
            if state == _MORE:
                pair.queued = True
                self._carry.append((pid, pair))
            elif state == _DONE:
                finished.append(self._finish(pid, "done"))
            elif state == _RESET:
                finished.append(self._finish(pid, "reset"))
        if now >= self._next_idle_check:
            self._expire_idle(now, finished)
        self._set_wake(bool(self._carry))
        return finished

    def _pump_pair(self, pair: _Pair, now: float) -> int:
        if pair.failed:
            return _RESET
        more = False
        progressed = False
        for d in (0, 1):
            try:
                rc, moved = self._pump_direction(pair, d)
            except OSError:
                return _RESET
            more = more or rc
            progressed = progressed or moved
        if progressed:
            pair.last = now
        if pair.dirs[0].shut and pair.dirs[1].shut:
            return _DONE
        return _MORE if more else _IDLE

    def _pump_direction(self, pair: _Pair, d: int) -> tuple[bool, bool]:
        """(budget used up, bytes or EOF moved); socket errors propagate as OSError."""
        dr = pair.dirs[d]
        src = pair.socks[d]
        dst = pair.socks[1 - d]
        budget = _READ_BUDGET
        progressed = False
        bufsize = self._bufsize
        while True:
            if dr.buf is not None:
                if not pair.writable[1 - d]:
                    return False, progressed
                try:
                    n = dst.send(dr.buf, _SEND_FLAGS)
                except BlockingIOError:
                    pair.writable[1 - d] = False
                    return False, progressed
                progressed = True
                self._count_sent(pair, d, n)
                if n < len(dr.buf):
                    # A short send means the socket is full; EPOLLOUT follows when it drains.
                    dr.buf = dr.buf[n:]
                    pair.writable[1 - d] = False
                    return False, progressed
                dr.buf = None
                continue
            if dr.eof:
                if not dr.shut:
                    # When the other way has ended too, the pair is done and its close sends
                    # this FIN; a first EOF waits one poll for the other (see relay.c).
                    other = pair.dirs[1 - d]
                    if not (other.eof and other.buf is None):
                        if not dr.waited:
                            dr.waited = True
                            return True, progressed
                        dst.shutdown(socket.SHUT_WR)
                    dr.shut = True
                return False, progressed
            if not pair.readable[d]:
                return False, progressed
            if budget == 0:
                return True, progressed
            budget -= 1
            try:
                data = src.recv(bufsize, _RECV_FLAGS)
            except BlockingIOError:
                pair.readable[d] = False
                return False, progressed
            progressed = True
            if not data:
                dr.eof = True
                continue
            # A short stream read drained the socket; later data raises a new edge. Not so
            # when a FIN is queued: recv stops in front of it and no new edge will come for it.
            if len(data) < bufsize and not pair.hup[d]:
                pair.readable[d] = False
            sent = 0
            if pair.writable[1 - d]:
                try:
                    sent = dst.send(data, _SEND_FLAGS)
                except BlockingIOError:
                    sent = 0
                self._count_sent(pair, d, sent)
                if sent < len(data):
                    pair.writable[1 - d] = False
            if sent < len(data):
                dr.buf = memoryview(data)[sent:]
                return False, progressed

    @staticmethod
    def _count_sent(pair: _Pair, d: int, n: int) -> None:
        if d == 0 and pair.pre_left:
            k = min(n, pair.pre_left)
            pair.pre_left -= k
            n -= k
        pair.dirs[d].nbytes += n


def make_relay(bufsize: int = 65536) -> RelayLike:
    """The compiled Relay when the fast path is available, else PyRelay."""
    fastpath = load_fastpath()
    if fastpath is not None:
        relay: RelayLike = fastpath.Relay(bufsize)
        return relay
    return PyRelay(bufsize)
