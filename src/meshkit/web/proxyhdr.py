"""The listener's PROXY protocol stage (the `proxyprotocol` directive): before a connection
starts, read the PROXY v1/v2 header a trusted load balancer puts in front of the client's
bytes (meshkit.l4.proxyproto parses it), and start the connection with the client address it
carries.

The socket is peeked (MSG_PEEK), so that exactly the header is consumed and the client's own
bytes (a request head, a TLS ClientHello) stay in the socket for the connection that follows;
a header that arrives in pieces is consumed as it comes (every byte of it is header). A
source outside the trusted networks that sends a whole PROXY header is refused and logged; a
trusted source may connect without one. The stage sits in the server's connection set, so
the timeout sweep ends a header that takes longer than `timeout` and shutdown closes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

from meshkit.l4 import proxyproto

__all__ = ["ProxyPolicy", "ProxyStage"]

log = logging.getLogger("meshkit.web")

_PEEK = 4096  # a PROXY header longer than this (v2 with large TLVs) is refused

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyPolicy:
    """Who may send a PROXY header on a port, and how long it may take (math.inf: no limit)."""

    def __init__(self, networks: Sequence[Network], timeout: float) -> None:
        self.networks = list(networks)
        self.timeout = timeout

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


class ProxyStage:
    """One accepted socket waiting for its PROXY header (or its absence)."""

    def __init__(
        self,
        server: Any,
        sock: socket.socket,
        remote: Any,
        local: Any,
        policy: ProxyPolicy,
    ) -> None:
        self._server = server
        self._loop = server._loop
        self._sock = sock
        self._fd = sock.fileno()
        self._remote = remote
        self._local = local
        self._trusted = policy.trusts(str(remote[0]))
        self._deadline = self._loop.time() + policy.timeout
        self._buf = b""
        self._done = False

    def start(self) -> None:
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            peek = self._sock.recv(_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort()
            return
        if not peek:
            self._abort()
            return
        data = self._buf + peek
        try:
            parsed = proxyproto.parse(data)
        except ValueError as exc:
            if self._buf:  # a header that went wrong half-way
                self._refuse(f"a broken PROXY header ({exc})")
            else:
                self._go(self._remote)  # no header: the source speaks for itself
            return
        if not self._trusted:
            if parsed is None:
                self._go(self._remote)  # too little to tell: what follows will (400)
            else:
                self._refuse("a PROXY header from a source not listed in proxyprotocol")
            return
        if parsed is None:
            if len(data) >= _PEEK:
                self._refuse(f"a PROXY header longer than {_PEEK} bytes")
                return
            # all of it is header so far: take it off the socket and wait for the rest
            try:
                self._buf += self._sock.recv(len(peek))
            except OSError:
                self._abort()
            return
        header, n = parsed
        try:
            rest = n - len(self._buf)
            while rest > 0:  # the header's bytes are in the socket already (peeked)
                got = self._sock.recv(rest)
                if not got:
                    raise ConnectionResetError
                rest -= len(got)
        except OSError:
            self._abort()
            return
        if header.command == "PROXY" and header.src is not None:
            self._go(header.src)
        else:  # LOCAL (the balancer's health check) or no addresses: the socket's own
            self._go(self._remote)

    def _go(self, remote: Any) -> None:
        self._done = True
        self._loop.remove_reader(self._fd)
        self._server._conns.discard(self)
        self._server._start_conn(self._sock, remote, self._local)

    def _refuse(self, what: str) -> None:
        log.warning("connection from %s:%s refused: %s", self._remote[0], self._remote[1], what)
        self._abort()

    # --- what the server asks of every connection in its set

    def check_deadline(self, now: float) -> None:
        if now > self._deadline:
            log.info(
                "connection from %s:%s closed: no complete PROXY header in time",
                self._remote[0],
                self._remote[1],
            )
            self._abort()

    def begin_shutdown(self) -> None:
        self._abort()

    def _abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._server._conn_closed(self)
