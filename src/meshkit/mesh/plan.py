"""What one node's share of the service mesh is, worked out from the network map (sans-IO).

Every node answers for every service by itself: a VIP lives in each overlay network's namespace
on every node (its ARP answered there, never across the overlay) with an L4 relay spreading new
flows over the service's up tasks on all nodes; a port published in ingress mode is a relay in
the host namespace on every node to the tasks' addresses on the ``ingress`` network; a port in
host mode is a relay on the nodes running a task, to that node's tasks only. The shell
(meshkit.mesh.node) turns this plan into addresses and relays and keeps them in step with it.

A relay is named by a key that stays the same while its listening side does, so that a change of
tasks only changes its backends (open flows to tasks that stay are kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshkit.net.overlay import netns_for as overlay_ns
from meshkit.net.vipnat import NsVips, VipEntry

HOST = ""  # the namespace the agent runs in
KERNEL_POLICIES = ("round_robin",)  # what meshkit.net.vipnat's DNAT does: numgen inc


@dataclass(frozen=True)
class Listen:
    """One listening socket: on ip:port, relayed to the backends' target port."""

    ip: str
    port: int
    target: int
    proto: str  # "tcp" | "udp"


@dataclass(frozen=True)
class RelayPlan:
    key: str
    service: str  # its name, for logs
    kind: str  # "vip" | "ingress" | "host"
    listen_ns: str  # HOST or a namespace name
    backend_ns: str
    listens: tuple[Listen, ...]
    proxy_protocol: str | None
    backends: tuple[str, ...] = ()
    policy: str = "round_robin"  # the connection table's (meshkit.lb)

    def kernel_ok(self) -> bool:
        """Whether nftables can do this relay's work (a VIP's declared ports): no PROXY
        protocol header to write and a policy the DNAT's numgen does. Decided once per
        service from its plan; the node's path (meshkit.mesh.vipports) has the last word."""
        return self.kind == "vip" and self.proxy_protocol is None and self.policy in KERNEL_POLICIES

    def shape(self) -> tuple[Any, ...]:
        """What cannot change without listening anew."""
        return (self.listen_ns, self.backend_ns, self.listens, self.proxy_protocol)


@dataclass(frozen=True)
class MeshPlan:
    relays: dict[str, RelayPlan] = field(default_factory=dict)
    # overlay namespace -> the VIPs its bridge holds
    vips: dict[str, frozenset[str]] = field(default_factory=dict)
    # published ports two services ask for: "8091/tcp" -> why it is not served
    conflicts: dict[str, str] = field(default_factory=dict)
    # overlay namespace -> (this node's endpoint address there, its VIPs on every port)
    # (meshkit.mesh.vipports)
    vip_ports: dict[str, NsVips] = field(default_factory=dict)


def _up_addrs(svc: Mapping[str, Any], net_id: str) -> tuple[str, ...]:
    return tuple(
        sorted(
            t["addrs"][net_id]
            for t in svc.get("tasks") or []
            if t.get("up") and net_id in (t.get("addrs") or {})
        )
    )


def _endpoint(net: Mapping[str, Any], node_id: str) -> str:
    """This node's own address on a network ("" when the map gives none)."""
    for ep in net.get("endpoints") or []:
        if ep.get("node_id") == node_id and not ep.get("task_id"):
            return str(ep["ip"])
    return ""


def _ports(svc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(svc.get("ports") or [])


def plan(netmap: Mapping[str, Any], node_id: str, built: set[str] | None = None) -> MeshPlan:
    """This node's VIPs, relays and DNS servers. `built`: the networks whose namespace this
    node has up (None: all of the map's); a VIP or ingress relay needs its network's."""
    networks: Mapping[str, Any] = netmap.get("networks") or {}
    services: Mapping[str, Any] = netmap.get("services") or {}
    have = set(networks) if built is None else set(built) & set(networks)
    ingress_id = next((nid for nid, n in networks.items() if n.get("ingress")), None)
    relays: dict[str, RelayPlan] = {}
    vips: dict[str, set[str]] = {overlay_ns(nid, node_id): set() for nid in have}
    conflicts: dict[str, str] = {}
    published: dict[str, str] = {}  # "8091/tcp" -> service name holding it
    every_port: dict[str, list[VipEntry]] = {ns: [] for ns in vips}
    sources = {overlay_ns(nid, node_id): _endpoint(networks[nid], node_id) for nid in have}

    for sid in sorted(services):
        svc = services[sid]
        name = str(svc.get("name") or sid)
        # the VIPs: one relay per network, listening on the VIP for every declared port of
        # the service; every other port of the VIP is the namespace table's (vip_ports)
        targets = sorted({(int(p["target"]), str(p["protocol"])) for p in _ports(svc)})
        for net_id, vip in sorted((svc.get("vips") or {}).items()):
            if net_id not in have:
                continue
            ns = overlay_ns(net_id, node_id)
            vips[ns].add(vip)
            if not targets:
                every_port[ns].append(VipEntry(vip, name, _up_addrs(svc, net_id)))
                continue  # a VIP with no port answers ARP and ping only
            rp = relays[f"vip/{sid}/{net_id}"] = RelayPlan(
                key=f"vip/{sid}/{net_id}",
                service=name,
                kind="vip",
                listen_ns=ns,
                backend_ns=ns,
                listens=tuple(Listen(vip, t, t, proto) for t, proto in targets),
                proxy_protocol=None,
                backends=_up_addrs(svc, net_id),
            )
            every_port[ns].append(
                VipEntry(vip, name, rp.backends, tuple(targets), kernel=rp.kernel_ok())
            )
        # published ports
        for p in _ports(svc):
            if not p.get("published"):
                continue
            port, proto, target = int(p["published"]), str(p["protocol"]), int(p["target"])
            slot = f"{port}/{proto}"
            if slot in published and published[slot] != name:
                conflicts[slot] = (
                    f"published port {slot} is asked for by services {published[slot]} and {name}"
                )
                continue
            published[slot] = name
            pp = "v2" if p.get("proxy_protocol") else None
            listen = (Listen("0.0.0.0", port, target, proto),)
            if p.get("mode", "ingress") == "ingress":
                if ingress_id is None or ingress_id not in have:
                    continue
                relays[f"publish/{slot}"] = RelayPlan(
                    key=f"publish/{slot}",
                    service=name,
                    kind="ingress",
                    listen_ns=HOST,
                    backend_ns=overlay_ns(ingress_id, node_id),
                    listens=listen,
                    proxy_protocol=pp,
                    backends=_up_addrs(svc, ingress_id),
                )
                continue
            host_plan = _host_mode(svc, node_id, have, listen, pp, slot, name)
            if host_plan is not None:
                relays[host_plan.key] = host_plan
    for slot in conflicts:
        relays.pop(f"publish/{slot}", None)
        relays.pop(f"host/{slot}", None)
    return MeshPlan(
        relays=relays,
        vips={ns: frozenset(v) for ns, v in vips.items()},
        conflicts=conflicts,
        vip_ports={
            ns: (sources[ns], tuple(sorted(e, key=lambda v: v.vip))) for ns, e in every_port.items()
        },
    )


def _host_mode(
    svc: Mapping[str, Any],
    node_id: str,
    have: set[str],
    listen: tuple[Listen, ...],
    pp: str | None,
    slot: str,
    name: str,
) -> RelayPlan | None:
    """A port in host mode: listened on while this node runs a task of the service, relayed to
    this node's up tasks only. Tasks on a network are reached over it (all of them, through
    the first network they share); a task without one runs in the host's namespace and is
    reached on 127.0.0.1 (when it listens on the published port itself, nothing is needed)."""
    local = [t for t in svc.get("tasks") or [] if t.get("node_id") == node_id]
    if not local:
        return None
    shared = set.intersection(*(set(t.get("addrs") or {}) for t in local)) & have
    lst = listen[0]
    if shared:
        net_id = sorted(shared)[0]
        ns = overlay_ns(net_id, node_id)
        backends = tuple(sorted(t["addrs"][net_id] for t in local if t.get("up")))
    elif any(t.get("addrs") for t in local):
        return None  # on networks this node has not built (yet)
    else:
        if lst.port == lst.target:
            return None
        ns = HOST
        backends = ("127.0.0.1",) if any(t.get("up") for t in local) else ()
    return RelayPlan(
        key=f"host/{slot}",
        service=name,
        kind="host",
        listen_ns=HOST,
        backend_ns=ns,
        listens=listen,
        proxy_protocol=pp,
        backends=backends,
    )


def service_backends(
    netmap: Mapping[str, Any], node_id: str, name: str, built: set[str] | None = None
) -> tuple[str, tuple[str, ...]] | None:
    """(namespace to connect from, up task addresses) for a service by name, over the first of
    its networks this node has built (the ingress network last): what an upstream
    `service://NAME:PORT` of the node's web server uses. None: no such service, or none of
    its networks is here."""
    networks: Mapping[str, Any] = netmap.get("networks") or {}
    have = set(networks) if built is None else set(built) & set(networks)
    for svc in (netmap.get("services") or {}).values():
        if svc.get("name") != name:
            continue
        nets = sorted(
            {n for t in svc.get("tasks") or [] for n in t.get("addrs") or {}}
            | set(svc.get("vips") or {}),
            key=lambda n: (bool(networks.get(n, {}).get("ingress")), n),
        )
        for net_id in nets:
            if net_id in have:
                return overlay_ns(net_id, node_id), _up_addrs(svc, net_id)
        return None
    return None
