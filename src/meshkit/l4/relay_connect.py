"""New pairs for the pure-Python relay twin: ``add`` (two connected sockets), ``accept``,
``connect`` / ``retry`` (a backend connect the epoll loop finishes), and the fast lane
``serve`` (accept, table lookup and connect in one go). A part of ``PyRelay``
(meshkit.l4.relay), following csrc/relay.c step by step.
"""

from __future__ import annotations

import contextlib
import errno
import math
import operator
import os
import socket

from meshkit.l4.relay_flow import (
    _ACCEPT_SKIP,
    _CONNECT_TYPE,
    _CONNECTING,
    _FAILED,
    _IDLE_SLACK,
    _NO_SOCKET,
    _REGISTER,
    _RELAYING,
    Accepted,
    Finished,
    PairBook,
    _adopt,
    _close_fd,
    _known_id,
    _Pair,
    _parse_addr,
)
from meshkit.lb.conntable import FlowKey, PyConnTable, format_addr, parse_addr


class Connector(PairBook):
    """How pairs come to be, and how a backend connect ends (relaying, or failed)."""

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
        pid = self._store(pair, preamble)
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
        pid = self._store(pair, preamble)
        self._by_fd[client_fd] = (pid, 0)
        self._open += 1
        self._start_connect(pid, pair, family, addr, now, connect_timeout)
        return pid

    def _store(self, pair: _Pair, preamble: bytes) -> int:
        """Give `pair` an id (a freed one first), with the PROXY `preamble` queued to go to
        the backend before anything the client sends."""
        if preamble:
            pair.dirs[0].buf = memoryview(bytes(preamble))
            pair.pre_left = len(preamble)
        if self._free:
            pid = self._free.pop()
            self._pairs[pid] = pair
        else:
            pid = len(self._pairs)
            self._pairs.append(pair)
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
