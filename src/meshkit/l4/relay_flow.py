"""The pure-Python relay twin's book of pairs: what one (client, backend) pair holds
(``_Pair``, a ``_Dir`` per direction), the pair ids, the epoll and wake fds, and how a pair
ends (done, reset, idle, closed, a failed connect) with its flow released in its table.

``PairBook`` is the part of ``PyRelay`` (meshkit.l4.relay) that keeps those books; the
connects live in ``relay_connect``, the byte pump in ``relay``. The three follow the steps of
the compiled engine (csrc/relay.c); see meshkit.l4.relay for how it works.
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

from meshkit.lb.conntable import FlowKey, PyConnTable

# (pair_id, bytes_client_to_backend, bytes_backend_to_client, reason); reason is one of
# "done", "reset", "idle", "closed", and "connect" (the pair stays open, see meshkit.l4.relay).
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


def _known_id(backend_id: int) -> int:
    """A backend id as the table holds it (KeyError for what no table can hold)."""
    try:
        bid = operator.index(backend_id)
    except TypeError:
        raise KeyError(backend_id) from None
    if not 0 <= bid <= 0xFFFFFFFF:
        raise KeyError(backend_id)
    return bid


class PairBook:
    """Pair ids, sockets by fd, the epoll and wake fds, idle deadlines, and ending a pair."""

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

    def connect_error(self, pair_id: int) -> int:
        pair = self._pairs[pair_id] if 0 <= pair_id < len(self._pairs) else None
        if pair is None or pair.state != _FAILED:
            return 0
        return pair.conn_err

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

    def _note_deadline(self, deadline: float) -> None:
        self._next_idle_check = min(self._next_idle_check, deadline - _IDLE_SLACK)

    def _set_wake(self, want: bool) -> None:
        if want and not self._wake_armed:
            os.eventfd_write(self._wakefd, 1)
            self._wake_armed = True
        elif not want and self._wake_armed:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wakefd)
            self._wake_armed = False
