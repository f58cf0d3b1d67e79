"""The I/O shell of one node's service mesh: VIP addresses, VIP and routing-mesh relays, and the
DNS servers at 127.0.0.11 of the node's tasks, all on the agent's one event loop.

What to build comes from meshkit.mesh.plan (sans-IO, from the network map); each relay is an
L4 `Ingress` (meshkit.l4.ingress: the connection table and the C relay) whose listening and
backend sockets are made in the namespaces the plan names (meshkit.net.nsock). The names a
task resolves come from meshkit.net.dnsnames, served by meshkit.net.dnsserver.

The map changes within a second of a task going up, down or unhealthy (the tasks' reports go to
the managers, the new map comes back to every node by long poll): a task that left is taken out
of every relay at once and its open flows are closed, so nothing waits on a dead task; between
the task dying and the map saying so, a refused connect is retried on another task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.l4.errors import IngressError
from meshkit.l4.ingress import Ingress, IngressConfig
from meshkit.l4.spec import BackendSpec, Publish
from meshkit.mesh import plan as meshplan
from meshkit.mesh.vipports import VipPorts
from meshkit.net import nsock
from meshkit.net.dnsnames import Directory
from meshkit.net.dnsserver import DnsServer, Forwarder

log = logging.getLogger("meshkit.mesh")

BRIDGE = "br0"
RETRY = 5.0  # seconds between tries of a relay that could not start


class _Relay:
    """One planned relay and the `Ingress` serving it."""

    def __init__(self, plan: meshplan.RelayPlan, ingress: Ingress, refs: list[nsock.NetnsRef]):
        self.plan = plan
        self.ingress = ingress
        self.refs = refs

    def set_backends(self, ips: tuple[str, ...]) -> None:
        resolved = [(BackendSpec(ip, None), ip, int(socket.AF_INET)) for ip in ips]
        self.ingress.apply_backends(resolved, close_removed=True)
        self.plan = dataclasses.replace(self.plan, backends=ips)

    async def close(self) -> None:
        try:
            await self.ingress.stop(0)
        finally:
            for ref in self.refs:
                ref.close()


class NodeMesh:
    """This node's VIPs, relays and task DNS servers, kept in step with the network map."""

    def __init__(
        self,
        node_id: str,
        *,
        dns_upstreams: list[tuple[str, int]] | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self._map: Mapping[str, Any] = {}
        self._built: set[str] = set()
        self._directory = Directory.from_netmap({})
        self._directory_of: Mapping[str, Any] | None = None  # the map it was built from
        self._relays: dict[str, _Relay] = {}
        self._relay_errors: dict[str, str] = {}
        # VIP relays whose declared ports the namespace's nft table DNATs instead (no relay)
        self._kernel: dict[str, meshplan.RelayPlan] = {}
        self._vips: dict[str, frozenset[str]] = {}
        self.vip_ports = VipPorts()
        self._dns: dict[str, DnsServer] = {}
        self._dns_errors: dict[str, str] = {}
        self._conflicts: dict[str, str] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()
        self._forwarder: Forwarder | None = None
        self._dns_upstreams = dns_upstreams
        self._connect_timeout = connect_timeout
        self._refs: dict[str, nsock.NetnsRef] = {}  # namespaces web upstream sockets are made in
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._version = 0  # counts the maps applied, for watch()
        self._changed = asyncio.Event()

    # -- the map -----------------------------------------------------------------------------

    async def apply(self, netmap: Mapping[str, Any] | None, built: set[str] | None) -> None:
        """Make VIPs and relays what the map says, over the networks this node has up
        (`built`); None: the last ones again. Errors are kept per relay and reported; the
        others go on."""
        async with self._lock:
            if self._closed:
                return
            if netmap is not None and built is not None:
                self._map = netmap
                self._built = set(built)
            netmap = self._map
            if netmap is not self._directory_of:  # apply runs twice per map (see dispatch)
                self._directory = Directory.from_netmap(netmap)
                self._directory_of = netmap
            plan = meshplan.plan(netmap, self.node_id, self._built)
            for slot, why in plan.conflicts.items():
                if self._conflicts.get(slot) != why:
                    log.error("routing mesh: %s; neither is published on this node", why)
            self._conflicts = dict(plan.conflicts)
            # relays first off (their sockets hold namespaces), then addresses, then relays on
            for key in [k for k in self._relays if k not in plan.relays]:
                await self._close_relay(key)
            for key in [k for k in self._relay_errors if k not in plan.relays]:
                del self._relay_errors[key]
            await self._sync_vips(plan.vips)
            await self.vip_ports.sync(plan.vip_ports)
            self._kernel = {}
            for rp in plan.relays.values():
                if rp.kernel_ok() and self.vip_ports.kernel_serves(rp.listen_ns, rp.listens[0].ip):
                    # the table DNATs these ports now (after sync, so the table is in before
                    # the relay goes): a relay would see no new flow
                    self._kernel[rp.key] = rp
                    self._relay_errors.pop(rp.key, None)
                    if rp.key in self._relays:
                        await self._close_relay(rp.key)
                    continue
                await self._sync_relay(rp)
            for ns in [n for n in self._refs if n not in plan.vips]:
                self._refs.pop(ns).close()
        if self._relay_errors and self._retry is None and not self._closed:
            # e.g. a published port another program held may be free by then
            self._retry = asyncio.get_running_loop().call_later(RETRY, self._retry_now)
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.exception("mesh: a subscriber failed")

    def _retry_now(self) -> None:
        self._retry = None
        if not self._closed:
            self._retry_task = asyncio.get_running_loop().create_task(self.apply(None, None))

    async def _sync_vips(self, wanted: Mapping[str, frozenset[str]]) -> None:
        from meshkit.net import links

        for ns, vips in wanted.items():
            if self._vips.get(ns) == vips:
                continue

            def sync(ns: str = ns, vips: frozenset[str] = vips) -> None:
                with links.NsLinks(ns) as nl:
                    nl.sync_host_addresses(BRIDGE, set(vips))

            try:
                await asyncio.to_thread(sync)
                self._vips[ns] = vips
            except (links.LinkError, OSError) as exc:
                log.error("mesh: VIPs %s in %s: %s", ", ".join(sorted(vips)) or "-", ns, exc)
        for ns in [n for n in self._vips if n not in wanted]:
            del self._vips[ns]  # the network (and its namespace) went away

    async def _sync_relay(self, rp: meshplan.RelayPlan) -> None:
        have = self._relays.get(rp.key)
        if have is not None and have.plan.shape() != rp.shape():
            await self._close_relay(rp.key)
            have = None
        if have is None:
            try:
                have = await self._open_relay(rp)
            except (MeshkitError, OSError) as exc:
                # (the relay's own errors name `meshkit ingress` flags: say the reason alone)
                text = f"{_describe(rp)}: {exc.reason if isinstance(exc, IngressError) else exc}"
                if self._relay_errors.get(rp.key) != text:
                    log.error("mesh: %s", text)
                self._relay_errors[rp.key] = text
                return
            self._relay_errors.pop(rp.key, None)
            self._relays[rp.key] = have
            log.info("mesh: %s -> %d task(s)", _describe(rp), len(rp.backends))
        if have.plan.backends != rp.backends:
            have.set_backends(rp.backends)

    async def _open_relay(self, rp: meshplan.RelayPlan) -> _Relay:
        refs: list[nsock.NetnsRef] = []
        try:
            listen_ns = backend_ns = None
            if rp.listen_ns:
                listen_ns = nsock.NetnsRef.open_name(rp.listen_ns)
                refs.append(listen_ns)
            if rp.backend_ns and rp.backend_ns == rp.listen_ns:
                backend_ns = listen_ns
            elif rp.backend_ns:
                backend_ns = nsock.NetnsRef.open_name(rp.backend_ns)
                refs.append(backend_ns)
            config = IngressConfig(
                publishes=[Publish(lst.ip, lst.port, lst.target, lst.proto) for lst in rp.listens],
                backends=[],
                policy="round_robin",
                health_interval=0.0,  # the cluster's task states are the health checks
                connect_timeout=self._connect_timeout,
                retries=2,
                proxy_protocol=rp.proxy_protocol,
                fail_timeout=2.0,
                grace_period=0.0,
            )
            ing = Ingress(
                config, asyncio.get_running_loop(), listen_ns=listen_ns, backend_ns=backend_ns
            )
            await ing.start()
        except BaseException:
            for ref in refs:
                ref.close()
            raise
        relay = _Relay(dataclasses.replace(rp, backends=()), ing, refs)
        relay.set_backends(rp.backends)
        return relay

    async def _close_relay(self, key: str) -> None:
        relay = self._relays.pop(key, None)
        if relay is None:
            return
        try:
            await relay.close()
        except Exception:
            log.exception("mesh: closing %s failed", _describe(relay.plan))
        log.info("mesh: %s closed", _describe(relay.plan))

    # -- tasks (the executor calls these around a task's namespace) -------------------------
    # The executor owns the tasks' namespaces, so it alone opens and closes their DNS servers:
    # the network map may lag behind a namespace made or removed a moment ago.

    async def task_attached(self, task_id: str, ns: str) -> None:
        """A task's namespace is on its networks (or was adopted after an agent restart):
        serve its DNS, before its process starts."""
        if task_id not in self._dns and not self._closed:
            await self._open_dns(task_id, ns)

    def runs_here(self) -> list[str] | None:
        """The one-off tasks (`meshkit run`) the map places on this node; None before the
        first map."""
        if not self._map:
            return None
        return sorted(
            {
                str(ep["task_id"])
                for net in (self._map.get("networks") or {}).values()
                for ep in net.get("endpoints") or []
                if ep.get("run") and ep.get("node_id") == self.node_id
            }
        )

    def knows_task(self, task_id: str) -> bool:
        """Whether the last map names the task (its DNS server then answers for its networks)."""
        return self._directory.networks_of(task_id) is not None

    def task_detached(self, task_id: str) -> None:
        """A task's namespace is about to go: let go of it (open sockets would keep it)."""
        self._close_dns(task_id)
        self._dns_errors.pop(task_id, None)

    async def _open_dns(self, task_id: str, ns: str) -> None:
        try:
            ref = nsock.NetnsRef.open_name(ns)
        except nsock.NetnsError as exc:
            self._dns_errors[task_id] = str(exc)
            log.error("mesh: DNS of task %s: %s", task_id, exc)
            return
        if self._forwarder is None:
            self._forwarder = Forwarder(self._dns_upstreams)
        server = DnsServer(
            asyncio.get_running_loop(), ref, task_id, lambda: self._directory, self._forwarder
        )
        try:
            await server.start()
        except OSError as exc:
            ref.close()
            self._dns_errors[task_id] = str(exc)
            log.error("mesh: DNS of task %s: %s", task_id, exc)
            return
        self._dns_errors.pop(task_id, None)
        self._dns[task_id] = server
        ref.close()  # the server's sockets hold the namespace from here on

    def _close_dns(self, task_id: str) -> None:
        server = self._dns.pop(task_id, None)
        if server is not None:
            server.close()

    # -- the web server's upstreams (meshkit.web.proxy.services.ServiceDirectory) -----------

    def known(self, service: str) -> bool:
        return any(s.get("name") == service for s in (self._map.get("services") or {}).values())

    def endpoints(self, service: str) -> list[str]:
        found = meshplan.service_backends(self._map, self.node_id, service, self._built)
        return [] if found is None else list(found[1])

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def socket_for(self, service: str, family: int) -> socket.socket:
        found = meshplan.service_backends(self._map, self.node_id, service, self._built)
        if found is None:
            raise OSError(f"service {service} has no network on this node")
        ns = found[0]
        ref = self._refs.get(ns)
        if ref is None:
            ref = self._refs[ns] = nsock.NetnsRef.open_name(ns)
        return nsock.socket_in(ref, family, socket.SOCK_STREAM)

    async def watch(self, service: str, version: Any, wait: float) -> dict[str, Any]:
        """A long poll for `meshkit ingress --service` (another process on this node): where
        the service's up tasks are, answered at once when `version` is not the current one,
        else when the map changes or after `wait` seconds."""
        if version == self._version and not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        found = meshplan.service_backends(self._map, self.node_id, service, self._built)
        return {
            "version": self._version,
            "known": self.known(service),
            "netns": "" if found is None else found[0],
            "backends": [] if found is None else list(found[1]),
            "agent_pid": os.getpid(),
        }

    # -- reports -----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        relays = []
        for key in sorted(set(self._relays) | set(self._relay_errors)):
            relay = self._relays.get(key)
            row: dict[str, Any] = {"key": key}
            if relay is not None:
                rp = relay.plan
                ing = relay.ingress
                row.update(
                    service=rp.service,
                    kind=rp.kind,
                    listen=[f"{lst.ip}:{lst.port}/{lst.proto}" for lst in rp.listens],
                    backends=list(rp.backends),
                    up=sum(1 for ep in ing.endpoints.values() if ep.health.up),
                    flows=ing.open_flows(),
                    no_backend=ing.no_backend,
                )
            if key in self._relay_errors:
                row["error"] = self._relay_errors[key]
            relays.append(row)
        for key, rp in sorted(self._kernel.items()):
            relays.append({
                "key": key,
                "service": rp.service,
                "kind": rp.kind,
                "path": "nft",  # DNAT in the namespace's table, no relay
                "listen": [f"{lst.ip}:{lst.port}/{lst.proto}" for lst in rp.listens],
                "backends": list(rp.backends),
                "up": len(rp.backends),  # the map's up tasks: the kernel checks nothing more
                "flows_total": self.vip_ports.declared_flows(rp.listens[0].ip),
            })  # fmt: skip
        dns = {t: s.counters.as_dict() for t, s in self._dns.items()}
        out: dict[str, Any] = {"relays": relays, "dns": dns, "vip_ports": self.vip_ports.report()}
        if self._dns_errors:
            out["dns_errors"] = dict(self._dns_errors)
        if self._conflicts:
            out["conflicts"] = dict(self._conflicts)
        return out

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        async with self._lock:
            self._closed = True
            for key in list(self._relays):
                await self._close_relay(key)
            await self.vip_ports.close()
            for task_id in list(self._dns):
                self._close_dns(task_id)
            for ref in self._refs.values():
                ref.close()
            self._refs.clear()
        self._subscribers.clear()


def _describe(rp: meshplan.RelayPlan) -> str:
    where = ", ".join(f"{lst.ip}:{lst.port}/{lst.proto}" for lst in rp.listens)
    what = {"vip": "VIP", "ingress": "published port", "host": "published port (host mode)"}
    return f"service {rp.service}: {what.get(rp.kind, rp.kind)} {where}"
