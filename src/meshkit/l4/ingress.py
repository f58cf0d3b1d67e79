"""The I/O shell of `meshkit ingress`: listeners, backend connects, health probes, reloads.

Decisions live elsewhere: which backend gets a flow is the connection table's (meshkit.lb),
moving bytes is the relay engine's (meshkit.l4.relay, C or pure Python), health flips are
HealthState's, argument parsing is meshkit.l4.spec's. This module wires them to sockets on
one event loop. Hot-path callbacks use add_reader/add_writer on sockets this module owns,
never transports, so that the relay engine can take the file descriptors over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshkit.base.errors import MeshkitError
from meshkit.base.netns import NetnsRef, entered
from meshkit.base.runtime import Signals
from meshkit.l4 import proxyproto
from meshkit.l4.errors import IngressError
from meshkit.l4.metrics import MetricFamily, metrics_response, render
from meshkit.l4.relay import make_relay
from meshkit.l4.spec import BackendSpec, Publish, parse_backends_file
from meshkit.lb import ConnTable
from meshkit.lb.health import HealthState

log = logging.getLogger("meshkit.ingress")

TCP = 6
UDP = 17
ACCEPT_BATCH = 64
UDP_BATCH = 64
UDP_MAX = 65535


@dataclass
class IngressConfig:
    publishes: list[Publish]
    backends: list[BackendSpec]
    backends_file: str | None = None
    policy: str = "round_robin"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    connect_timeout: float = 3.0
    idle_timeout: float = 300.0
    retries: int = 2
    proxy_protocol: str | None = None
    max_conns: int | None = None
    metrics: tuple[str, int] | None = None
    grace_period: float = 10.0
    # How long a backend taken out by passive failures alone stays out when no active probe
    # watches it (UDP backends, or --health-interval 0s).
    fail_timeout: float = 10.0


class BackendSource(Protocol):
    """Keeps an Ingress's backends current from elsewhere (e.g. a cluster service's up tasks,
    meshkit.cluster.node.servicefeed), through `Ingress.apply_backends`."""

    async def run(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Endpoint:
    """One backend address as probed and counted: (ip, port) after resolution."""

    name: str  # the user's spelling, HOST:PORT, for logs and metrics
    ip: str
    port: int
    family: int
    weight: int
    health: HealthState
    connect_failures: int = 0
    removed: bool = False  # taken out by a reload; open flows drain
    users: list[tuple[Listener, int]] = field(default_factory=list)  # (listener, backend id)


def backend_id_for(ip: str, port: int, taken: set[int]) -> int:
    """A stable id from the address, so every node numbers a backend alike (Maglev needs it)."""
    bid = zlib.crc32(f"{ip}|{port}".encode())
    while bid in taken:
        bid = (bid + 1) & 0xFFFFFFFF
    return bid


def fmt_addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Listener:
    """One --publish: a bound socket, its connection table and its backends' ids."""

    def __init__(self, ingress: Ingress, publish: Publish) -> None:
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
                        sock.fileno(), self.table, self.local_ip, self.publish.published,
                        ing.idle_timeout, ing.connect_timeout, now, budget,
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
                pair = ing.relay.connect(fd, ep.ip, ep.port, ing.idle_timeout, now,
                                         flow.preamble, ing.connect_timeout)
        except OSError as exc:  # out of memory or descriptors: this client only
            log.error("%s: cannot relay client %s: %s", self.name, fmt_addr(cip, cport),
                      exc.strerror or exc)
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


class Ingress:
    """The whole process: listeners, the relay, health probes, signals and metrics."""

    def __init__(
        self,
        config: IngressConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        listen_ns: NetnsRef | None = None,
        backend_ns: NetnsRef | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        # Where the listening sockets and the backend sockets are made (None: this thread's
        # own namespace): a VIP listens and connects inside an overlay network's namespace, a
        # routing-mesh port listens on the host and connects inside the ingress network's.
        self.listen_ns = listen_ns
        self.backend_ns = backend_ns
        self.max_conns = config.max_conns
        # Read on every new flow; kept flat to spare the hot path two attribute lookups.
        self.proxy_protocol = config.proxy_protocol
        self.idle_timeout = config.idle_timeout
        self.connect_timeout = config.connect_timeout
        self.relay = make_relay()
        self.listeners = [Listener(self, p) for p in config.publishes]
        # Served flows' keys name the listener by its (canonical) address and port.
        self.tcp_listeners = {
            (ipaddress.ip_address(lst.local_ip).compressed, lst.publish.published): lst
            for lst in self.listeners
            if lst.publish.proto == "tcp"
        }
        # Keyed by protocol too: TCP and UDP on one port are two services, and a UDP
        # service's ICMP refusals must never take the TCP one out (nor the other way round).
        self.endpoints: dict[tuple[str, int, str], Endpoint] = {}
        self.pairs: dict[int, TcpFlow] = {}
        self.stopping = False
        self.no_backend = 0
        self.stopped = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.metrics_server: asyncio.AbstractServer | None = None
        self.reload_lock = asyncio.Lock()
        self._last_no_backend_log = -1e9

    # -- set-up ------------------------------------------------------------------------------

    async def resolve(
        self, specs: list[BackendSpec], flag: str
    ) -> list[tuple[BackendSpec, str, int]]:
        """(spec, ip, family) per backend; an unresolvable name is an error naming it."""
        out = []
        for spec in specs:
            try:
                infos = await self.loop.getaddrinfo(
                    spec.host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except socket.gaierror as exc:
                raise IngressError(
                    flag, spec.host, f"cannot resolve {spec.host!r}: {exc.strerror}"
                ) from None
            family, _, _, _, sockaddr = infos[0]
            out.append((spec, str(sockaddr[0]), int(family)))
        return out

    def apply_backends(
        self, resolved: list[tuple[BackendSpec, str, int]], *, close_removed: bool = False
    ) -> None:
        """Make every listener's table match `resolved`; open flows of kept backends stay put.

        Open flows of a backend that left drain on their own, or are closed at once with
        `close_removed` (a task that went down: its flows would only hang)."""
        weights: dict[tuple[str, int, str], int] = {}
        for lst in self.listeners:
            proto = lst.publish.proto
            for spec, ip, family in resolved:
                port = spec.port if spec.port is not None else lst.publish.target
                addr = (ip, port, proto)
                weights[addr] = spec.weight
                ep = self.endpoints.get(addr)
                if ep is None:
                    ep = Endpoint(
                        fmt_addr(spec.host, port) + ("/udp" if proto == "udp" else ""),
                        ip,
                        port,
                        family,
                        spec.weight,
                        HealthState(self.config.rise, self.config.fall, up=True),
                    )
                    self.endpoints[addr] = ep
                bid = next((b for owner, b in ep.users if owner is lst), None)
                if bid is None:
                    bid = backend_id_for(ip, port, set(lst.by_id))
                    lst.table.add_backend(bid, spec.weight, ep.health.up)
                    lst.table.set_address(bid, ip, port)
                    lst.by_id[bid] = ep
                    ep.users.append((lst, bid))
                elif ep.weight != spec.weight:
                    lst.table.set_weight(bid, spec.weight)
        for addr, ep in list(self.endpoints.items()):
            if addr in weights:
                ep.weight = weights[addr]
                continue
            # Gone from the file: no new flows; open TCP flows drain on their own.
            if close_removed:
                self.set_endpoint_up(ep, False)
            for lst, bid in ep.users:
                for key in lst.table.remove_backend(bid):
                    if key[0] == UDP:
                        lst.drop_udp_flow(key)
                lst.by_id.pop(bid, None)
            ep.users.clear()
            ep.removed = True
            del self.endpoints[addr]
            log.info("backend %s removed; its open flows %s", ep.name,
                     "are closed" if close_removed else "drain")

    async def start(self) -> None:
        cfg = self.config
        specs = list(cfg.backends)
        flag = "--backend"
        if cfg.backends_file is not None:
            specs = await self.read_backends_file()
            flag = "--backends-file"
        resolved = await self.resolve(specs, flag)
        try:
            for lst in self.listeners:
                lst.open()
        except BaseException:  # the ones already open are closed: nothing half-made stays
            for lst in self.listeners:
                lst.close()
            raise
        self.apply_backends(resolved)
        self.loop.add_reader(self.relay.fileno(), self.on_relay)
        for lst in self.listeners:
            lst.start()
            log.info(
                "listening on %s -> %d backend(s), policy %s", lst.name, len(lst.by_id), cfg.policy
            )
        if cfg.metrics is not None:
            host, port = cfg.metrics
            try:
                self.metrics_server = await asyncio.start_server(self.serve_metrics, host, port)
            except OSError as exc:
                raise IngressError(
                    "--metrics", fmt_addr(host, port), f"cannot listen: {exc.strerror}"
                ) from None
            log.info("metrics on http://%s/metrics", fmt_addr(host, port))
        self.tasks.append(self.loop.create_task(self.tick()))
        if cfg.health_interval > 0:
            self.tasks.append(self.loop.create_task(self.probe_forever()))

    # -- flows -------------------------------------------------------------------------------

    def on_relay(self) -> None:
        self.finish(self.relay.poll(self.loop.time()))

    def finish(self, finished: list[tuple[int, int, int, str]]) -> None:
        for pair, up, down, reason in finished:
            flow = self.pairs.pop(pair, None)
            if flow is None:
                # A served pair: the relay released its flow and counted its bytes.
                if reason == "connect":
                    self.retry_served(pair)
                continue
            lst = flow.listener
            if reason == "connect" and self.retry(pair, flow):
                self.pairs[pair] = flow
                continue
            lst.pair_of.pop(flow.key, None)
            lst.table.release(*flow.key)
            ep = lst.by_id.get(flow.bid)
            if ep is not None:
                lst.table.add_bytes(flow.bid, up + down)
                if down and ep.health.consecutive_failures and ep.health.up:
                    ep.health.record(True)  # it answered: a streak of passive failures ends
        if finished:
            self.maybe_resume()
            if self.stopping and self.open_flows() <= 0:
                self.stopped.set()

    def retry_served(self, pair: int) -> bool:
        """A served pair's connect failed: its flow is ours until retry() hands it back."""
        info = self.relay.flow_of(pair)
        lst = None if info is None else self.tcp_listeners.get((info[0][3], info[0][4]))
        if info is None or lst is None:
            self.relay.close(pair)
            return False
        return self.retry(pair, TcpFlow(lst, info[0], info[1], b""))

    def retry(self, pair: int, flow: TcpFlow) -> bool:
        """After a failed connect: try another backend (True), or give up (False, pair closed)."""
        lst = flow.listener
        reason = os.strerror(self.relay.connect_error(pair))
        lst.table.release(*flow.key)
        failed = lst.by_id.get(flow.bid)
        if failed is not None:
            self.passive_failure(failed, reason)
        flow.tried += (flow.bid,)
        bid: int | None = None
        if flow.tries < self.config.retries and not self.stopping:
            now = self.loop.time()
            bid = lst.table.lookup(*flow.key, now)
            if bid is not None and bid in flow.tried:
                # The policy chose a backend that just failed (Maglev always would): take the
                # next untried up backend instead, so that the retry means something.
                lst.table.release(*flow.key)
                bid = next((b for b in lst.table.backends()
                            if b not in flow.tried and lst.table.is_up(b)), None)
                if bid is not None:
                    lst.table.assign(*flow.key, bid, now)
            if bid is not None:
                ep = lst.by_id[bid]
                flow.bid, flow.tries = bid, flow.tries + 1
                with entered(self.backend_ns):
                    self.relay.retry(pair, ep.ip, ep.port, now, flow.preamble,
                                     self.config.connect_timeout, backend_id=bid)
                return True
        log.warning(
            "%s: client %s: no backend answered after %d tries (last: %s: %s)",
            lst.name, fmt_addr(flow.key[1], flow.key[2]), flow.tries + 1,
            failed.name if failed else "?", reason,
        )
        # Keep the flow's books straight: the table no longer holds it, the relay still does.
        flow.bid = -1
        self.relay.close(pair)
        return False

    def open_flows(self) -> int:
        """TCP pairs in the relay (connecting ones too) and UDP flows: what --max-conns caps."""
        return len(self.relay) + sum(len(lst.udp_flows) for lst in self.listeners)

    def maybe_resume(self) -> None:
        if self.stopping or self.max_conns is None or self.open_flows() >= self.max_conns:
            return
        for lst in self.listeners:
            if not lst.accepting and lst.sock is not None:
                lst.start()

    def pause_accepting(self) -> None:
        for lst in self.listeners:
            if lst.publish.proto == "tcp":
                lst.pause()

    def count_no_backend(self, lst: Listener, n: int = 1) -> None:
        self.no_backend += n
        now = self.loop.time()
        if now - self._last_no_backend_log > 5:
            self._last_no_backend_log = now
            log.warning("%s: no backend is up; refusing new flows", lst.name)

    def passive_failure(self, ep: Endpoint, reason: str) -> None:
        ep.connect_failures += 1
        self.health_result(ep, False, reason)

    def health_result(self, ep: Endpoint, ok: bool, reason: str) -> None:
        if ep.removed:
            return
        flipped = ep.health.record(ok)
        if flipped is None:
            return
        if flipped:
            log.info("backend %s is up (%d good checks)", ep.name, self.config.rise)
        else:
            log.warning(
                "backend %s is down (%d failed checks, last: %s)", ep.name, self.config.fall, reason
            )
            if not self.probed(ep):
                # Nothing would ever bring it back: give it another chance after a while, as
                # Caddy's fail_timeout does; a backend still refusing goes down again.
                delay = self.config.fail_timeout
                log.info("backend %s gets another try in %gs (no active health check)",
                         ep.name, delay)
                self.loop.call_later(delay, self.revive, ep)
        self.set_endpoint_up(ep, flipped)

    def probed(self, ep: Endpoint) -> bool:
        """Whether active probes watch this endpoint (TCP backends, with checks on)."""
        return self.config.health_interval > 0 and any(
            lst.publish.proto == "tcp" for lst, _ in ep.users
        )

    def revive(self, ep: Endpoint) -> None:
        if ep.removed or ep.health.up or self.stopping:
            return
        ep.health = HealthState(self.config.rise, self.config.fall, up=True)
        log.info("backend %s is back in rotation on trial", ep.name)
        self.set_endpoint_up(ep, True)

    def set_endpoint_up(self, ep: Endpoint, up: bool) -> None:
        for lst, bid in ep.users:
            if not up:
                # Served pairs first: the relay releases their flows as it closes them.
                self.finish(self.relay.close_backend(lst.table, bid))
            gone = lst.table.set_up(bid, up)
            for key in gone:
                if key[0] == UDP:
                    lst.drop_udp_flow(key)
                    continue
                pair = lst.pair_of.get(key)
                if pair is not None:
                    done = self.relay.close(pair)
                    if done is not None:
                        self.finish([done])

    async def probe_forever(self) -> None:
        while not self.stopping:
            eps = [ep for ep in self.endpoints.values() if self.probed(ep)]
            await asyncio.gather(*(self.probe(ep) for ep in eps))
            await asyncio.sleep(self.config.health_interval)

    async def probe(self, ep: Endpoint) -> None:
        with entered(self.backend_ns):
            sock = socket.socket(ep.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        reason = ""
        try:
            await asyncio.wait_for(
                self.loop.sock_connect(sock, (ep.ip, ep.port)), self.config.health_timeout
            )
            ok = True
        except asyncio.TimeoutError:
            ok, reason = False, f"no answer within {self.config.health_timeout:g}s"
        except OSError as exc:
            ok, reason = False, exc.strerror or str(exc)
        finally:
            sock.close()
        self.health_result(ep, ok, reason)

    async def tick(self) -> None:
        """Once a second: idle expiry in the relay and in the UDP flow table."""
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            self.finish(self.relay.poll(now))
            idle = self.config.idle_timeout
            if idle > 0:
                for lst in self.listeners:
                    if lst.publish.proto == "udp":
                        for key, _bid in lst.table.expire(now, idle):
                            lst.drop_udp_flow(key)

    # -- reload, metrics, stop -----------------------------------------------------------------

    async def read_backends_file(self) -> list[BackendSpec]:
        path = self.config.backends_file
        assert path is not None
        # In an executor: a reload reads the file while flows are being relayed on this loop
        # (the read itself is capped and refuses FIFOs and devices, see meshkit.base.safefile).
        specs = await self.loop.run_in_executor(None, parse_backends_file, path)
        if not specs:
            # Most often a file caught half-written; refusing keeps traffic flowing.
            raise MeshkitError(
                f"{path}: no backends in it (write one HOST[:PORT][ weight=N] a line)"
            )
        return specs

    async def reload(self) -> None:
        if self.config.backends_file is None:
            log.info("SIGHUP: no --backends-file to re-read")
            return
        async with self.reload_lock:
            try:
                specs = await self.read_backends_file()
                resolved = await self.resolve(specs, "--backends-file")
            except MeshkitError as exc:
                log.error("reload failed, keeping the running backends: %s", exc)
                return
            self.apply_backends(resolved)
            log.info("reloaded %s: %d backend(s)", self.config.backends_file, len(resolved))

    async def serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.TimeoutError,
            ConnectionError,
        ):
            head = b""
        writer.write(metrics_response(head, render(self.metric_families())))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def metric_families(self) -> list[MetricFamily]:
        live: dict[tuple[Listener, int], int] = {}
        for pair, flow in self.pairs.items():
            st = self.relay.stats(pair)
            if st is not None:
                k = (flow.listener, flow.bid)
                live[k] = live.get(k, 0) + st[0] + st[1]
        for lst in self.listeners:
            if lst.publish.proto == "tcp":
                for bid, nbytes in self.relay.live_bytes(lst.table).items():
                    live[(lst, bid)] = live.get((lst, bid), 0) + nbytes
            for udp in lst.udp_flows.values():
                live[(lst, udp.bid)] = live.get((lst, udp.bid), 0) + udp.bytes
        fams = {
            "up": MetricFamily(
                "meshkit_ingress_backend_up", "1 when the backend is healthy.", "gauge", []
            ),
            "active": MetricFamily(
                "meshkit_ingress_flows_active", "Open flows per backend.", "gauge", []
            ),
            "total": MetricFamily(
                "meshkit_ingress_flows_total", "Flows sent to a backend.", "counter", []
            ),
            "bytes": MetricFamily(
                "meshkit_ingress_bytes_total", "Bytes relayed both ways per backend.", "counter", []
            ),
            "fail": MetricFamily(
                "meshkit_ingress_connect_failures_total",
                "Failed connects and passive failures per backend.",
                "counter",
                [],
            ),
        }
        for lst in self.listeners:
            for bid, ep in sorted(lst.by_id.items(), key=lambda kv: kv[1].name):
                labels = {"listener": lst.name, "backend": ep.name}
                active, total, nbytes = lst.table.stats(bid)
                fams["up"].samples.append((labels, 1 if lst.table.is_up(bid) else 0))
                fams["active"].samples.append((labels, active))
                fams["total"].samples.append((labels, total))
                fams["bytes"].samples.append((labels, nbytes + live.get((lst, bid), 0)))
                fams["fail"].samples.append((labels, ep.connect_failures))
        nob = MetricFamily(
            "meshkit_ingress_no_backend_total",
            "Flows refused because no backend was up.",
            "counter",
            [({}, self.no_backend)],
        )
        return [*fams.values(), nob]

    async def stop(self, grace: float) -> None:
        self.stopping = True
        for lst in self.listeners:
            lst.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for task in self.tasks:
            task.cancel()
        if self.open_flows() > 0 and grace > 0:
            log.info("draining %d open flow(s) for up to %gs", self.open_flows(), grace)
            # Keep expiring idle pairs while we wait.
            deadline = self.loop.time() + grace
            while self.open_flows() > 0 and self.loop.time() < deadline:
                self.finish(self.relay.poll(self.loop.time()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self.stopped.wait(), min(1.0, deadline - self.loop.time())
                    )
        self.finish(self.relay.close_all())
        self.loop.remove_reader(self.relay.fileno())


async def run_ingress(
    config: IngressConfig, source: Callable[[Ingress], BackendSource] | None = None
) -> None:
    """The `meshkit ingress` process: serve until SIGTERM/SIGINT; `source` (if given) is made
    for the started Ingress and feeds its backends."""
    loop = asyncio.get_running_loop()
    ing = Ingress(config, loop)
    await ing.start()
    feed = None
    if source is not None:
        feed = source(ing)
        ing.tasks.append(loop.create_task(feed.run()))

    def on_again(_sig: signal.Signals) -> None:  # a second signal: stop waiting for open flows
        ing.config.grace_period = 0
        ing.stopped.set()

    signals = Signals(
        loop,
        on_again=on_again,
        on_reload=lambda: ing.tasks.append(loop.create_task(ing.reload())),
        reload_signal=signal.SIGHUP,
    )
    signals.install()
    try:
        sig = await signals.stopped()
        log.info("%s: stopping", sig.name)
        await ing.stop(ing.config.grace_period)
    finally:
        signals.remove()
        if feed is not None:
            feed.close()
    log.info("stopped")
