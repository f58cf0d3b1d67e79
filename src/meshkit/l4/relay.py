"""The TCP relay engine: moves bytes both ways between (client, backend) socket pairs.

The L4 ingress accepts clients with ``relay.accept(listen_fd)`` and hands each one to
``relay.connect(client_fd, ip, port, ...)``, which connects to the backend and relays once
connected (``relay.add`` takes two sockets that are already connected).
The relay owns an epoll fd; the owner registers it with ``loop.add_reader(relay.fileno(), ...)``
and calls ``relay.poll(loop.time())`` when it is readable and from a ~1 s timer (idle expiry).
The relay never runs a thread of its own.

``PyRelay`` is the pure-Python twin of the compiled ``meshkit._fastpath.Relay`` (csrc/relay.c)
and follows the same steps, so both give the same results; ``make_relay`` picks one.

How it works (both implementations):

- Sockets are registered once, edge-triggered, for IN|OUT|RDHUP. The engine keeps its own
  "may be readable/writable" flags and clears one only on EAGAIN or a short read/write (after
  which the kernel signals a new edge), so ping-pong traffic costs no epoll_ctl calls.
- Bytes are sent on as soon as they are read; only what the destination did not take waits
  in a per-direction buffer, and while it waits the source is not read (at most ``bufsize``
  bytes per direction).
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

import contextlib
import errno
import math
import operator
import os
import select
import socket
import struct
from typing import Protocol

from meshkit._ext import load_fastpath
from meshkit.lb.conntable import FlowKey, PyConnTable, format_addr, parse_addr

__all__ = ["Accepted", "Finished", "PyRelay", "RelayLike", "make_relay"]

# (pair_id, bytes_client_to_backend, bytes_backend_to_client, reason); reason is one of
# "done", "reset", "idle", "closed", and "connect" (the pair stays open, see the module doc).
Finished = tuple[int, int, int, str]
# (fd, peer ip text, peer port) of an accepted client.
Accepted = tuple[int, str, int]

_MAX_EVENTS = 256
_READ_BUDGET = 16  # reads per direction per poll before yielding to the loop
_IDLE_SLACK = 1e-6  # scan a little early rather than miss a deadline to rounding
_WAKE = -1
_REGISTER = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_HUP_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_LINGER_RST = struct.pack("ii", 1, 0)
_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
_RECV_FLAGS = socket.MSG_DONTWAIT

_IDLE, _MORE, _DONE, _RESET = range(4)
# Pair states; relaying is 0 so that the hot path tests it as a plain truth value.
_RELAYING, _CONNECTING, _FAILED = range(3)
_CONNECT_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# accept() errors that concern one connection only: skip it and go on.
_ACCEPT_SKIP = frozenset(
    (
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENONET,
        errno.ENOPROTOOPT,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
    )
)


def _closed_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    return sock


# Stands in for the backend socket of a pair that has none (connect failed); fileno() is -1.
_NO_SOCKET = _closed_socket()


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


class _Dir:
    __slots__ = ("buf", "eof", "nbytes", "shut", "waited")

    def __init__(self) -> None:
        self.buf: memoryview | None = None  # bytes the destination has not taken yet
        self.nbytes = 0  # delivered to the destination, preamble excluded
        self.eof = False  # the source sent FIN
        self.shut = False  # FIN passed on to the destination
        self.waited = False  # the FIN waited one poll for the other way's


class _Pair:
    __slots__ = (
        "backend",
        "conn_deadline",
        "conn_err",
        "dirs",
        "failed",
        "hup",
        "idle",
        "key",
        "last",
        "pre_left",
        "queued",
        "readable",
        "socks",
        "state",
        "table",
        "writable",
    )

    def __init__(self, socks: list[socket.socket], idle: float, now: float):
        self.socks = socks  # 0 = client, 1 = backend; direction d reads d, writes 1 - d
        self.idle = idle
        self.last = now
        self.readable = [False, False]
        self.writable = [False, False]
        self.hup = [False, False]  # the peer's FIN (or an error) is queued behind the data
        self.dirs = (_Dir(), _Dir())
        self.pre_left = 0  # preamble bytes still at the front of dirs[0]
        self.queued = False
        self.failed = False
        self.state = _RELAYING
        self.conn_err = 0  # connecting: a failure not yet reported; failed: the failure
        self.conn_deadline = math.inf
        self.table: PyConnTable | None = None  # served pairs: their table, key and backend
        self.key: FlowKey = (6, "", 0, "", 0)
        self.backend = 0


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _parse_addr(ip: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The family and connect() address of ip (as inet_pton reads it) and port 1-65535."""
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, not {port!r}")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, ip)
        except (OSError, ValueError):
            continue
        return family, (ip, port)
    raise ValueError(f"not an IPv4 or IPv6 address: {ip!r}")


class PyRelay:
    """Pure-Python relay engine with the same API and behaviour as the compiled Relay."""

    def __init__(self, bufsize: int = 65536) -> None:
        if bufsize <= 0:
            raise ValueError("bufsize must be positive")
        self._bufsize = bufsize
        self._ep = select.epoll()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wakefd, select.EPOLLIN)
        self._wake_armed = False
        self._pairs: list[_Pair | None] = []
        self._free: list[int] = []  # LIFO of finished ids, so ids stay small
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._carry: list[tuple[int, _Pair]] = []
        self._open = 0
        self._next_idle_check = math.inf

    def __del__(self) -> None:
        # Matches the C engine: dropping the relay closes whatever it still owns.
        try:
            for pair in self._pairs:
                if pair is not None:
                    for sock in pair.socks:
                        sock.close()
            self._ep.close()
            os.close(self._wakefd)
        except (AttributeError, OSError):
            pass

    def fileno(self) -> int:
        return self._ep.fileno()

    def __len__(self) -> int:
        return self._open

    def add(
        self,
        client_fd: int,
        backend_fd: int,
        idle_timeout: float,
        now: float,
        preamble: bytes = b"",
    ) -> int:
        if (
            client_fd < 0
            or backend_fd < 0
            or client_fd == backend_fd
            or (len(preamble) > self._bufsize)
        ):
            for fd in {client_fd, backend_fd}:
                if fd >= 0:
                    _close_fd(fd)
            raise ValueError("invalid fds or preamble longer than bufsize (both fds are closed)")
        socks: list[socket.socket] = []
        registered: list[int] = []
        try:
            for fd in (client_fd, backend_fd):
                socks.append(_adopt(fd))
            for sock in socks:
                # EPOLL_CTL_ADD reports what is already ready, as a first edge.
                self._ep.register(sock.fileno(), _REGISTER)
                registered.append(sock.fileno())
        except OSError:
            for fd in registered:
                self._ep.unregister(fd)
            for sock in socks:
                sock.close()
            for fd in (client_fd, backend_fd)[len(socks) :]:
                _close_fd(fd)
            raise
        pair = _Pair([socks[0], socks[1]], idle_timeout, now)
        if preamble:
            pair.dirs[0].buf = memoryview(bytes(preamble))
            pair.pre_left = len(preamble)
        if self._free:
            pid = self._free.pop()
            self._pairs[pid] = pair
        else:
            pid = len(self._pairs)
            self._pairs.append(pair)
        self._by_fd[client_fd] = (pid, 0)
        self._by_fd[backend_fd] = (pid, 1)
        self._open += 1
        if idle_timeout > 0:
            self._next_idle_check = min(self._next_idle_check, now + idle_timeout - _IDLE_SLACK)
        return pid

    def accept(self, listen_fd: int, max_count: int = 64) -> list[Accepted]:
        if max_count < 1:
            raise ValueError("max_count must be positive")
        out: list[Accepted] = []
        tries = 0  # skipped connections count too, as in the C engine
        lsock = socket.socket(fileno=listen_fd)
        try:
            while len(out) < max_count and tries < max_count:
                try:
                    conn, addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    tries += 1
                    if exc.errno in _ACCEPT_SKIP:
                        continue
                    if out:
                        break
                    raise
                tries += 1
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    out.append((conn.detach(), addr[0], addr[1]))
                else:
                    out.append((conn.detach(), "", 0))
        finally:
            lsock.detach()
        return out

    def connect(
        self,
        client_fd: int,
        ip: str,
        port: int,
        idle_timeout: float,
        now: float,
        preamble: bytes = b"",
        connect_timeout: float = 3.0,
    ) -> int:
        family, addr = _parse_addr(ip, port)
        if client_fd < 0 or len(preamble) > self._bufsize:
            raise ValueError(
                f"invalid fd, address {ip!r} or preamble longer than bufsize"
                " (client_fd is not taken)"
            )
        client = _adopt(client_fd)
        try:
            self._ep.register(client_fd, _REGISTER)
        except OSError:
            client.detach()
            raise
        pair = _Pair([client, _NO_SOCKET], idle_timeout, now)
        if preamble:
            pair.dirs[0].buf = memoryview(bytes(preamble))
            pair.pre_left = len(preamble)
        if self._free:
            pid = self._free.pop()
            self._pairs[pid] = pair
        else:
            pid = len(self._pairs)
            self._pairs.append(pair)
        self._by_fd[client_fd] = (pid, 0)
        self._open += 1
        self._start_connect(pid, pair, family, addr, now, connect_timeout)
        return pid

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
    ) -> None:
        bid = None if backend_id is None else _known_id(backend_id)
        pair = self._pairs[pair_id] if 0 <= pair_id < len(self._pairs) else None
        try:
            family, addr = _parse_addr(ip, port)
        except ValueError:
            pair = None
        if pair is None or pair.state != _FAILED or len(preamble) > self._bufsize:
            raise ValueError(
                f"pair {pair_id} is not a failed connect, or invalid address {ip!r}"
                " or preamble longer than bufsize"
            )
        if preamble:
            pair.dirs[0].buf = memoryview(bytes(preamble))
            pair.pre_left = len(preamble)
        self._start_connect(pair_id, pair, family, addr, now, connect_timeout)
        if bid is not None and pair.table is not None:
            pair.backend = bid

    def connect_error(self, pair_id: int) -> int:
        pair = self._pairs[pair_id] if 0 <= pair_id < len(self._pairs) else None
        if pair is None or pair.state != _FAILED:
            return 0
        return pair.conn_err

    def _start_connect(
        self,
        pid: int,
        pair: _Pair,
        family: socket.AddressFamily,
        addr: tuple[str, int],
        now: float,
        connect_timeout: float,
    ) -> None:
        """Starts the backend connect; a failure waits in conn_err for the next poll."""
        pair.conn_err = 0
        pair.state = _CONNECTING
        pair.conn_deadline = now + connect_timeout if connect_timeout > 0 else math.inf
        try:
            sock = socket.socket(family, _CONNECT_TYPE)
        except OSError as exc:
            err = exc.errno or errno.EIO
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err in (0, errno.EINPROGRESS, errno.EINTR):
                try:
                    self._ep.register(sock.fileno(), _REGISTER)
                except OSError as exc:
                    err = exc.errno or errno.EIO
                else:
                    pair.socks[1] = sock
                    self._by_fd[sock.fileno()] = (pid, 1)
                    if connect_timeout > 0:
                        self._note_deadline(pair.conn_deadline)
                    return
            sock.close()
        pair.conn_err = err
        pair.conn_deadline = math.inf
        if not pair.queued:
            pair.queued = True
            self._carry.append((pid, pair))
        self._set_wake(True)

    def _connect_done(self, pid: int, pair: _Pair, now: float, finished: list[Finished]) -> bool:
        """A connecting pair with news: True if it now relays (failures go to finished)."""
        if pair.state != _CONNECTING:
            return False
        err = pair.conn_err
        if not err:
            if not (pair.writable[1] or pair.hup[1]):
                return False
            # A plain EPOLLOUT edge is a completed connect; ERR/HUP need SO_ERROR.
            if pair.hup[1]:
                try:
                    err = pair.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except OSError as exc:
                    err = exc.errno or errno.EIO
        if err:
            finished.append(self._connect_failed(pid, pair, err))
            return False
        pair.state = _RELAYING
        pair.last = now
        if pair.idle > 0:
            self._note_deadline(now + pair.idle)
        return True

    def _connect_failed(self, pid: int, pair: _Pair, err: int) -> Finished:
        sock = pair.socks[1]
        fd = sock.fileno()
        if fd >= 0:
            with contextlib.suppress(OSError):
                self._ep.unregister(fd)
            self._by_fd.pop(fd, None)
            sock.close()
        pair.socks[1] = _NO_SOCKET
        pair.dirs[0].buf = None
        pair.pre_left = 0
        pair.readable[1] = pair.writable[1] = pair.hup[1] = False
        pair.state = _FAILED
        pair.conn_err = err
        return (pid, pair.dirs[0].nbytes, pair.dirs[1].nbytes, "connect")

    def _note_deadline(self, deadline: float) -> None:
        self._next_idle_check = min(self._next_idle_check, deadline - _IDLE_SLACK)

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

    def close(self, pair_id: int) -> Finished | None:
        if not 0 <= pair_id < len(self._pairs) or self._pairs[pair_id] is None:
            return None
        return self._finish(pair_id, "closed")

    def stats(self, pair_id: int) -> tuple[int, int] | None:
        if not 0 <= pair_id < len(self._pairs):
            return None
        pair = self._pairs[pair_id]
        if pair is None:
            return None
        return (pair.dirs[0].nbytes, pair.dirs[1].nbytes)

    def close_all(self) -> list[Finished]:
        self._carry = []
        done = [
            self._finish(pid, "closed") for pid, pair in enumerate(self._pairs) if pair is not None
        ]
        self._set_wake(False)
        return done

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

    def _finish(self, pid: int, reason: str) -> Finished:
        pair = self._pairs[pid]
        assert pair is not None
        table = pair.table
        if table is not None and pair.state != _FAILED:
            table.release(*pair.key)
            with contextlib.suppress(KeyError):
                table.add_bytes(pair.backend, pair.dirs[0].nbytes + pair.dirs[1].nbytes)
        for sock in pair.socks:
            fd = sock.fileno()
            if fd < 0:
                continue  # no backend socket: the connect failed
            if reason == "reset":
                # Linger 0 turns the close into an RST, so the peer learns of the reset.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            try:
                self._ep.unregister(fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBADF):
                    raise
            self._by_fd.pop(fd, None)
            sock.close()
        pair.queued = False
        self._pairs[pid] = None
        self._free.append(pid)
        self._open -= 1
        return (pid, pair.dirs[0].nbytes, pair.dirs[1].nbytes, reason)

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
    ) -> tuple[int, int]:
        if not isinstance(table, PyConnTable):
            raise TypeError(f"PyRelay.serve needs a PyConnTable, not {type(table).__name__}")
        if max_count < 1:
            raise ValueError("max_count must be positive")
        table.find(6, "0.0.0.0", 0, dst_ip, dst_port)  # checks dst as the C key builder does
        dst = format_addr(parse_addr(dst_ip))
        dport = operator.index(dst_port)
        if listen_fd < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        n = refused = tries = 0
        lsock = socket.socket(fileno=listen_fd)
        try:
            while n < max_count and tries < max_count:
                try:
                    conn, addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    tries += 1
                    if exc.errno in _ACCEPT_SKIP:
                        continue
                    if n:
                        break
                    raise
                tries += 1
                n += 1
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                target = None
                bid: int | None = None
                key: FlowKey = (6, "", 0, dst, dport)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    src = format_addr(parse_addr(addr[0].partition("%")[0]))
                    key = (6, src, addr[1], dst, dport)
                    bid = table.lookup(*key, now)
                    if bid is not None:
                        target = table._connect_addr(bid)
                        if target is None:
                            table.release(*key)
                if target is None or bid is None:
                    conn.close()
                    refused += 1
                    continue
                conn.setblocking(False)
                fd = conn.detach()
                try:
                    self._ep.register(fd, _REGISTER)
                except OSError:
                    table.release(*key)
                    _close_fd(fd)
                    n -= 1
                    if n:
                        break
                    raise
                pair = _Pair([_adopt(fd), _NO_SOCKET], idle_timeout, now)
                pair.table = table
                pair.key = key
                pair.backend = bid
                if self._free:
                    pid = self._free.pop()
                    self._pairs[pid] = pair
                else:
                    pid = len(self._pairs)
                    self._pairs.append(pair)
                self._by_fd[fd] = (pid, 0)
                self._open += 1
                self._start_connect(pid, pair, target[0], target[1], now, connect_timeout)
        finally:
            lsock.detach()
        return (n, refused)

    def flow_of(self, pair_id: int) -> tuple[FlowKey, int] | None:
        pair = self._pairs[pair_id] if 0 <= pair_id < len(self._pairs) else None
        if pair is None or pair.table is None:
            return None
        return (pair.key, pair.backend)

    def close_backend(self, table: PyConnTable, backend_id: int) -> list[Finished]:
        out = []
        for pid, pair in enumerate(self._pairs):
            if (
                pair is None
                or pair.table is not table
                or pair.backend != backend_id
                or pair.state == _FAILED
            ):
                continue
            if pair.state == _CONNECTING:  # fails as a refused connect: retried elsewhere
                out.append(self._connect_failed(pid, pair, errno.ECONNABORTED))
            else:
                out.append(self._finish(pid, "closed"))
        return out

    def live_bytes(self, table: PyConnTable) -> dict[int, int]:
        out: dict[int, int] = {}
        for pair in self._pairs:
            if pair is not None and pair.table is table and pair.state != _FAILED:
                out[pair.backend] = (
                    out.get(pair.backend, 0) + pair.dirs[0].nbytes + pair.dirs[1].nbytes
                )
        return out

    def _expire_idle(self, now: float, finished: list[Finished]) -> None:
        nxt = math.inf
        for pid, pair in enumerate(self._pairs):
            if pair is None:
                continue
            if pair.state == _RELAYING:
                if not pair.idle > 0:
                    continue
                if pair.last <= now - pair.idle:
                    finished.append(self._finish(pid, "idle"))
                else:
                    nxt = min(nxt, pair.last + pair.idle)
            elif pair.state == _CONNECTING:
                if pair.conn_deadline <= now:
                    finished.append(self._connect_failed(pid, pair, errno.ETIMEDOUT))
                else:
                    nxt = min(nxt, pair.conn_deadline)
        self._next_idle_check = nxt - _IDLE_SLACK

    def _set_wake(self, want: bool) -> None:
        if want and not self._wake_armed:
            os.eventfd_write(self._wakefd, 1)
            self._wake_armed = True
        elif not want and self._wake_armed:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wakefd)
            self._wake_armed = False


def _known_id(backend_id: int) -> int:
    """A backend id as the table holds it (KeyError for what no table can hold)."""
    try:
        bid = operator.index(backend_id)
    except TypeError:
        raise KeyError(backend_id) from None
    if not 0 <= bid <= 0xFFFFFFFF:
        raise KeyError(backend_id)
    return bid


def make_relay(bufsize: int = 65536) -> RelayLike:
    """The compiled Relay when the fast path is available, else PyRelay."""
    fastpath = load_fastpath()
    if fastpath is not None:
        relay: RelayLike = fastpath.Relay(bufsize)
        return relay
    return PyRelay(bufsize)
