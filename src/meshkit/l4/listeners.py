"""The ingress's listeners, one per --publish: TCP accepts handed to the relay engine (the C
fast lane, or a PROXY header built here and a connect), UDP datagrams relayed per client over
connected sockets. Every flow's backend comes from the listener's connection table.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshkit.base.netns import NetnsRef, entered
from meshkit.l4 import proxyproto
from meshkit.l4.config import IngressConfig
from meshkit.l4.endpoints import Endpoint, fmt_addr
from meshkit.l4.errors import IngressError
from meshkit.l4.spec import Publish
from meshkit.lb import ConnTable

if TYPE_CHECKING:
    import asyncio

    from meshkit.l4.relay import RelayLike

log = logging.getLogger("meshkit.ingress")

TCP = 6
UDP = 17
ACCEPT_BATCH = 64
UDP_BATCH = 64
UDP_MAX = 65535


class IngressLike(Protocol):
    """What listeners and their flows use of the ingress that owns them
    (meshkit.l4.ingress.Ingress, whose own attributes and methods these are)."""

    config: IngressConfig
    loop: asyncio.AbstractEventLoop
    listen_ns: NetnsRef | None
    backend_ns: NetnsRef | None
    relay: RelayLike
    max_conns: int | None
    proxy_protocol: str | None
    idle_timeout: float
    connect_timeout: float
    pairs: dict[int, TcpFlow]
    stopping: bool

    def open_flows(self) -> int: ...

    def pause_accepting(self) -> None: ...

    def maybe_resume(self) -> None: ...

    def count_no_backend(self, lst: Listener, n: int = 1) -> None: ...

    def passive_failure(self, ep: Endpoint, reason: str) -> None: ...


class Listener:
    """One --publish: a bound socket, its connection table and its backends' ids."""

    def __init__(self, ingress: IngressLike, publish: Publish) -> None:
        self.ingress = ingress
        self.publish = publish
        self.table = ConnTable(ingress.config.policy)
        self.by_id: dict[int, Endpoint] = {}
        self.sock: socket.socket | None = None
        self.accepting = False
        # The flow keys' destination: the published address (a wildcard for a wildcard
        # listener; the PROXY header asks the socket for the real one).
        self.local_ip = publish.host
        self.udp_flows: dict[tuple[int, str, int, str, int], UdpFlow] = {}
        self.pair_of: dict[tuple[int, str, int, str, int], int] = {}  # TCP flow -> relay pair

    @property
    def name(self) -> str:
        p = self.publish
        return f"{fmt_addr(p.host, p.published)}/{p.proto}"

    def open(self) -> None:
        p = self.publish
        family = socket.AF_INET6 if ":" in p.host else socket.AF_INET
        kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
        with entered(self.ingress.listen_ns):
            sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
            # Accepted sockets inherit it, so the relay need not set it on each (relay.c).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((p.host, p.published))
            if kind == socket.SOCK_STREAM:
                sock.listen(4096)
        except OSError as exc:
            sock.close()
            reason = "port already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise IngressError(
                "--publish",
                f"{fmt_addr(p.host, p.published)}:{p.target}/{p.proto}",
                f"cannot listen on {fmt_addr(p.host, p.published)}/{p.proto}: {reason}",
            ) from None
        sock.setblocking(False)
        self.sock = sock

    def start(self) -> None:
        assert self.sock is not None
        self.accepting = True
        if self.publish.proto == "tcp":
            self.ingress.loop.add_reader(self.sock.fileno(), self.on_accept)
        else:
            self.ingress.loop.add_reader(self.sock.fileno(), self.on_datagrams)

    def pause(self) -> None:
        if self.accepting and self.sock is not None:
            self.ingress.loop.remove_reader(self.sock.fileno())
            self.accepting = False

    def close(self) -> None:
        self.pause()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for flow in list(self.udp_flows.values()):
            flow.close()
        self.udp_flows.clear()

    # -- TCP ---------------------------------------------------------------------------------

    def on_accept(self) -> None:
        ing = self.ingress
        sock = self.sock
        if sock is None:
            return
        budget = ACCEPT_BATCH
        if ing.max_conns is not None:
            budget = min(budget, ing.max_conns - ing.open_flows())
            if budget <= 0:
                # Leave the rest in the kernel's backlog; resumed when a flow ends.
                ing.pause_accepting()
                return
        now = ing.loop.time()
        try:
            if ing.proxy_protocol is None:
                # The fast lane: accept, pick, connect and (later) release all in C, with no
                # Python work per connection unless its connect fails.
                with entered(ing.backend_ns):  # the backend sockets the relay makes
                    _accepted, refused = ing.relay.serve(
                        sock.fileno(),
                        self.table,
                        self.local_ip,
                        self.publish.published,
                        ing.idle_timeout,
                        ing.connect_timeout,
                        now,
                        budget,
                    )
                if refused:
                    ing.count_no_backend(self, refused)
                return
            clients = ing.relay.accept(sock.fileno(), budget)
        except OSError as exc:
            log.error("accept on %s: %s; pausing for 1s", self.name, exc.strerror)
            self.pause()
            ing.loop.call_later(1.0, self.resume_if_running)
            return
        for fd, cip, cport in clients:
            self.open_flow(fd, cip, cport, now)

    def open_flow(self, fd: int, cip: str, cport: int, now: float) -> None:
        """Give an accepted client a backend and let the relay connect to it.

        The route for --proxy-protocol, whose header is built here; the rest take serve()."""
        ing = self.ingress
        key = (TCP, cip, cport, self.local_ip, self.publish.published)
        bid = self.table.lookup(*key, now)
        if bid is None:
            ing.count_no_backend(self)
            os.close(fd)
            return
        ep = self.by_id[bid]
        flow = TcpFlow(self, key, bid, self.preamble(fd, cip, cport))
        try:
            with entered(ing.backend_ns):
                pair = ing.relay.connect(
                    fd, ep.ip, ep.port, ing.idle_timeout, now, flow.preamble, ing.connect_timeout
                )
        except OSError as exc:  # out of memory or descriptors: this client only
            log.error(
                "%s: cannot relay client %s: %s",
                self.name,
                fmt_addr(cip, cport),
                exc.strerror or exc,
            )
            self.table.release(*key)
            os.close(fd)
            return
        ing.pairs[pair] = flow
        self.pair_of[key] = pair

    def preamble(self, fd: int, cip: str, cport: int) -> bytes:
        pp = self.ingress.config.proxy_protocol
        if pp is None:
            return b""
        lip = self.local_ip
        if lip in ("0.0.0.0", "::"):
            s = socket.socket(fileno=fd)
            try:
                lip = s.getsockname()[0]
            finally:
                s.detach()
        src, dst = (cip, cport), (lip, self.publish.published)
        if pp == "v1":
            return proxyproto.encode_v1("tcp", src, dst)
        return proxyproto.encode_v2("tcp", src, dst)

    def resume_if_running(self) -> None:
        if not self.ingress.stopping and not self.accepting and self.sock is not None:
            self.start()

    # -- UDP ---------------------------------------------------------------------------------

    def on_datagrams(self) -> None:
        sock = self.sock
        if sock is None:
            return
        ing = self.ingress
        now = ing.loop.time()
        lip, lport = self.local_ip, self.publish.published
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            cip, cport = addr[0], addr[1]
            bid = self.table.lookup(UDP, cip, cport, lip, lport, now)
            if bid is None:
                ing.count_no_backend(self)
                continue
            key = (UDP, cip, cport, lip, lport)
            flow = self.udp_flows.get(key)
            if flow is None:
                if ing.max_conns is not None and ing.open_flows() >= ing.max_conns:
                    self.table.release(UDP, cip, cport, lip, lport)
                    continue
                try:
                    flow = UdpFlow(self, key, self.by_id[bid], bid, (cip, cport))
                except OSError as exc:
                    self.table.release(UDP, cip, cport, lip, lport)
                    ing.passive_failure(self.by_id[bid], exc.strerror or str(exc))
                    continue
                self.udp_flows[key] = flow
            flow.send(data)

    def drop_udp_flow(self, key: tuple[int, str, int, str, int]) -> None:
        flow = self.udp_flows.pop(key, None)
        if flow is not None:
            flow.close()


class UdpFlow:
    """One client's datagrams to one backend, over a connected socket so replies find it."""

    def __init__(
        self,
        listener: Listener,
        key: tuple[int, str, int, str, int],
        ep: Endpoint,
        bid: int,
        client: tuple[str, int],
    ) -> None:
        self.listener = listener
        self.key = key
        self.endpoint = ep
        self.bid = bid
        self.client = client
        self.bytes = 0
        with entered(listener.ingress.backend_ns):
            self.sock = socket.socket(ep.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect((ep.ip, ep.port))
        except OSError:
            self.sock.close()
            raise
        self.header = b""
        ing = listener.ingress
        if ing.config.proxy_protocol == "v2":
            self.header = proxyproto.encode_v2(
                "udp", client, (listener.local_ip, listener.publish.published)
            )
        ing.loop.add_reader(self.sock.fileno(), self.on_reply)

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(self.header + data if self.header else data)
            self.bytes += len(data)
        except (BlockingIOError, InterruptedError):
            pass  # UDP may drop; the client retries as it would on any network
        except OSError as exc:
            self.fail(exc)

    def on_reply(self) -> None:
        lsock = self.listener.sock
        ing = self.listener.ingress
        for _ in range(UDP_BATCH):
            try:
                data = self.sock.recv(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.fail(exc)
                return
            self.bytes += len(data)
            if lsock is not None:
                with contextlib.suppress(OSError):
                    lsock.sendto(data, self.client)
        # A reply keeps the flow alive as much as a request does.
        self.listener.table.lookup(*self.key, ing.loop.time())

    def fail(self, exc: OSError) -> None:
        # ECONNREFUSED here is the ICMP port-unreachable of a dead UDP backend.
        self.listener.ingress.passive_failure(self.endpoint, exc.strerror or str(exc))
        self.listener.table.release(*self.key)
        self.listener.drop_udp_flow(self.key)

    def close(self) -> None:
        ing = self.listener.ingress
        if self.sock.fileno() >= 0:
            ing.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            if self.bid in self.listener.by_id:
                self.listener.table.add_bytes(self.bid, self.bytes)
            self.bytes = 0
            ing.maybe_resume()


@dataclass
class TcpFlow:
    """What the ingress remembers of one relay pair: where it came in and which backend has it."""

    listener: Listener
    key: tuple[int, str, int, str, int]
    bid: int
    preamble: bytes
    tries: int = 0
    tried: tuple[int, ...] = ()  # backends whose connect failed (retries are rare)
