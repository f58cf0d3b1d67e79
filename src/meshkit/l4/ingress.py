"""The I/O shell of `meshkit ingress`: listeners, backend connects, health probes, reloads.

Decisions live elsewhere: which backend gets a flow is the connection table's (meshkit.lb),
moving bytes is the relay engine's (meshkit.l4.relay, C or pure Python), health flips are
HealthState's, argument parsing is meshkit.l4.spec's. This module wires them to sockets on
one event loop. Hot-path callbacks use add_reader/add_writer on sockets these modules own,
never transports, so that the relay engine can take the file descriptors over.

``Ingress`` here (set-up, backends from flags, a file or a ``BackendSource``, relay pairs
ending and retried, reload, stop) is made of parts next to it: ``listeners`` (one per
--publish, TCP and UDP), ``endpoints`` (the backends as probed and counted),
``ingress_health`` (probes and passive failures) and ``ingress_metrics`` (/metrics), with
``IngressConfig`` in ``config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, Protocol

from meshkit.base.errors import MeshkitError
from meshkit.base.netns import NetnsRef, entered
from meshkit.base.runtime import Signals
from meshkit.l4.config import IngressConfig
from meshkit.l4.endpoints import Endpoint, backend_id_for, fmt_addr
from meshkit.l4.errors import IngressError
from meshkit.l4.ingress_health import BackendHealth
from meshkit.l4.ingress_metrics import IngressMetrics
from meshkit.l4.listeners import TCP, UDP, Listener, TcpFlow, UdpFlow
from meshkit.l4.relay import make_relay
from meshkit.l4.spec import BackendSpec, parse_backends_file
from meshkit.lb.health import HealthState

__all__ = [
    "TCP",
    "UDP",
    "BackendSource",
    "Endpoint",
    "Ingress",
    "IngressConfig",
    "Listener",
    "TcpFlow",
    "UdpFlow",
    "backend_id_for",
    "fmt_addr",
    "run_ingress",
]

log = logging.getLogger("meshkit.ingress")


class BackendSource(Protocol):
    """Keeps an Ingress's backends current from elsewhere (e.g. a cluster service's up tasks,
    meshkit.cluster.node.servicefeed), through `Ingress.apply_backends`."""

    async def run(self) -> None: ...

    def close(self) -> None: ...


class Ingress(BackendHealth, IngressMetrics):
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
            for owner, bid in ep.users:
                for key in owner.table.remove_backend(bid):
                    if key[0] == UDP:
                        owner.drop_udp_flow(key)
                owner.by_id.pop(bid, None)
            ep.users.clear()
            ep.removed = True
            del self.endpoints[addr]
            log.info(
                "backend %s removed; its open flows %s",
                ep.name,
                "are closed" if close_removed else "drain",
            )

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
                bid = next(
                    (b for b in lst.table.backends() if b not in flow.tried and lst.table.is_up(b)),
                    None,
                )
                if bid is not None:
                    lst.table.assign(*flow.key, bid, now)
            if bid is not None:
                ep = lst.by_id[bid]
                flow.bid, flow.tries = bid, flow.tries + 1
                with entered(self.backend_ns):
                    self.relay.retry(
                        pair,
                        ep.ip,
                        ep.port,
                        now,
                        flow.preamble,
                        self.config.connect_timeout,
                        backend_id=bid,
                    )
                return True
        log.warning(
            "%s: client %s: no backend answered after %d tries (last: %s: %s)",
            lst.name,
            fmt_addr(flow.key[1], flow.key[2]),
            flow.tries + 1,
            failed.name if failed else "?",
            reason,
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

    # -- reload, stop (health: ingress_health, metrics: ingress_metrics) -------------------

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
