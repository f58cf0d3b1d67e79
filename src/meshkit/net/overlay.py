"""One node's overlay: builds what the network map asks for on this node, plugs tasks into it,
probes the peers through it, and reports what it found.

For every network of the cluster, this node has a namespace ``mkn-<network id 8>-<node id 8>``
holding the bridge ``br0`` (MTU = the overlay MTU, the network's gateway address and this
node's own endpoint address, its MAC derived from the endpoint address) and the VXLAN port:
a kernel VXLAN link ``vx-<vni>`` or a TAP ``tap-<vni>`` served by meshkit's userspace data
plane (``meshkit.net.vxlan.plane``), whichever the network asks for and this kernel can do.

Peers come from cluster state only: for every endpoint (a node's own, or a task's) on another
node, a static FDB entry (MAC -> that node's underlay address) and an ARP-proxy neighbour entry
(IP -> MAC), replaced whenever the map changes, so an address reused on another node never
keeps an entry pointing at the old one. Nothing is flooded across nodes.

Probes (``meshkit.net.probe_io``) run over each network between the nodes' endpoint addresses,
plus a TCP connect to each peer's API port for the control plane; `report()` gives the
summary that rides on the heartbeats and ends up in `node ls` and `meshkit doctor`.

An encrypted network (``--opt encrypted``, overlay MTU = underlay - 78: sealing adds 28
bytes to VXLAN's 50) always runs on the userspace plane, whatever the
network or the kernel offer: its frames are sealed (meshkit.net.vxlan.seal) with the keys the
managers hand this node with its map (``apply``'s ``netkeys``), kept in memory only. A new key
is taken for receiving at once and for sending TX_SWITCH_DELAY later, so that every node
holds it before frames sealed with it arrive; until the first key comes, nothing is sent.

A task with a network that is not internal also gets ``gw0`` on the node's gateway bridge
(``meshkit.net.gateway``: its default route, masqueraded by the node); the gateway is built
from the map's ``gateways`` entry for this node and removed when the node leaves.

Netlink work runs in worker threads (``asyncio.to_thread``), never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshkit.net import ipam
from meshkit.net.overlay_keys import TX_SWITCH_DELAY as TX_SWITCH_DELAY
from meshkit.net.overlay_keys import OverlayKeys
from meshkit.net.overlay_net import BuiltNet as _Net
from meshkit.net.overlay_net import OverlayError as OverlayError
from meshkit.net.overlay_report import OverlayReport

log = logging.getLogger("meshkit.net.overlay")

BRIDGE = "br0"
NS_PREFIX = "mkn-"
RESOLV_DIR = Path("/etc/netns")
RESOLV_CONF = "nameserver 127.0.0.11\noptions ndots:0\n"
CONTROL_EVERY = 5.0
ATTACH_WAIT = 15.0


def netns_for(net_id: str, node_id: str) -> str:
    """The namespace holding one network's bridge and VXLAN port on one node."""
    return f"{NS_PREFIX}{net_id[:8]}-{node_id[:8]}"


def peer_tables(
    net: Mapping[str, Any], node_id: str, nodes: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, str], dict[str, str]]:
    """(fdb mac -> peer underlay address, neigh ip -> mac) for one network's endpoints on
    other nodes; this node's own endpoints are reached through the bridge."""
    fdb: dict[str, str] = {}
    neigh: dict[str, str] = {}
    for ep in net["endpoints"]:
        if ep["node_id"] == node_id or ep["node_id"] not in nodes:
            continue
        fdb[ep["mac"]] = str(nodes[ep["node_id"]]["addr"])
        neigh[ep["ip"]] = ep["mac"]
    return fdb, neigh


def _plane_first(net: Mapping[str, Any]) -> int:
    """Build order within one map: encrypted, then an explicit plane, then `auto`."""
    if net.get("encrypted"):
        return 0
    return 1 if str(net.get("dataplane") or "auto") != "auto" else 2


def _named_planes(netmap: Mapping[str, Any]) -> set[str]:
    """The data planes the map's networks ask for by name (`auto` ones aside)."""
    out: set[str] = set()
    for net in (netmap.get("networks") or {}).values():
        asked = "userspace" if net.get("encrypted") else str(net.get("dataplane") or "auto")
        if asked != "auto":
            out.add(asked)
    return out


def my_endpoint(net: Mapping[str, Any], node_id: str) -> str | None:
    for ep in net["endpoints"]:
        if ep["node_id"] == node_id and not ep["task_id"]:
            return str(ep["ip"])
    return None


class NodeOverlay(OverlayKeys, OverlayReport):
    """The overlay of one node, driven by the network map the agent receives."""

    def __init__(self, node_id: str, addr: str, gateway: Any = None) -> None:
        self.node_id = node_id
        self.addr = addr
        # meshkit.net.gateway.NodeGateway: the node's gateway bridge (None: no outbound access)
        self.gateway = gateway
        self._nets: dict[str, _Net] = {}
        self._errors: dict[str, str] = {}
        self._map: dict[str, Any] = {"nodes": {}, "networks": {}, "data_path_port": 4789}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._checks: list[Any] | None = None
        self._dataplane: Any = None
        self._control: dict[str, bool] = {}
        self._control_task: asyncio.Task[None] | None = None
        self._closed = False
        self._netkeys: dict[str, list[dict[str, Any]]] = {}

    # -- the map -------------------------------------------------------------------------------

    async def apply(
        self, netmap: Mapping[str, Any], netkeys: Mapping[str, list[dict[str, Any]]] | None = None
    ) -> None:
        """Make this node's overlay what `netmap` says (idempotent; errors are kept per network
        and reported, so one broken network does not stop the others). ``netkeys``: the keys
        of the encrypted networks ({network id: [{"id", "key"}]}, from the managers)."""
        async with self._lock:
            self._map = dict(netmap)
            self._netkeys = dict(netkeys or {})
            if self._control_task is None and not self._closed:
                self._control_task = asyncio.get_running_loop().create_task(self._control_loop())
            gw_subnet = (netmap.get("gateways") or {}).get(self.node_id)
            if self.gateway is not None and gw_subnet and not self._closed:
                await self.gateway.ensure(str(gw_subnet))
            wanted = dict(netmap.get("networks") or {})
            for net_id in [n for n in self._nets if n not in wanted]:
                await self._remove(self._nets.pop(net_id))
            for net_id in [n for n in self._errors if n not in wanted]:
                del self._errors[net_id]
            # networks that name their plane (or are sealed) first: `auto` follows what this
            # node runs, and one map may bring several new networks at once (the managers
            # coalesce map rebuilds), so a new auto network must not take the data-path port
            # for the other plane before a network asking for this one is built
            for net_id, net in sorted(wanted.items(), key=lambda item: _plane_first(item[1])):
                try:
                    built = self._nets.get(net_id)
                    if built is None:
                        built = await self._build(net)
                        self._nets[net_id] = built
                    await self._program(built, net)
                    self._errors.pop(net_id, None)
                    built.ready.set()
                except OverlayError as exc:
                    text = str(exc)
                    if not text.startswith(f"network {net.get('name')}: "):
                        text = f"network {net.get('name')}: {text}"
                    if self._errors.get(net_id) != text:
                        log.error("overlay %s", text)
                    self._errors[net_id] = text
            self._changed.set()

    async def _kernel_checks(self) -> list[Any]:
        if self._checks is None:
            from meshkit.net import kernelcheck

            self._checks = await asyncio.to_thread(kernelcheck.check_kernel)
        return self._checks or []

    async def _build(self, net: Mapping[str, Any]) -> _Net:
        from meshkit.net import kernelcheck, links
        from meshkit.net.vxlan.plane import DataplaneError

        endpoint = my_endpoint(net, self.node_id)
        if endpoint is None:
            raise OverlayError(f"this node has no address on network {net['name']} (subnet full?)")
        checks = await self._kernel_checks()
        asked = str(net.get("dataplane") or "auto")
        port = int(self._map.get("data_path_port") or 4789)
        # one data plane per data-path port on a node: the kernel's VXLAN socket and meshkit's
        # cannot share it, so `auto` follows what this node already runs
        running = {n.plane: n.name for n in self._nets.values()}
        sealed_here = any(n.get("encrypted") for n in (self._map.get("networks") or {}).values())
        if net.get("encrypted"):
            plane = "userspace"  # only meshkit's plane seals: forced on every node
        elif asked == "auto" and sealed_here and "kernel" not in running:
            # an encrypted network needs the userspace plane on this port: plain networks
            # left to choose share it rather than take the port for the kernel's
            plane = "userspace"
        elif asked == "auto" and len(running) == 1:
            plane = next(iter(running))
        elif asked == "auto" and not running and len(named := _named_planes(self._map)) == 1:
            # nothing built yet (a network that names its plane may have failed for now, its
            # old port still closing): do not take the port for the other plane, or that
            # network could never be built here
            plane = next(iter(named))
        else:
            try:
                plane, _why = kernelcheck.choose_dataplane(checks, asked)
            except Exception as exc:  # the asked-for data plane is impossible here
                raise OverlayError(str(exc)) from None
        other = "kernel" if plane == "userspace" else "userspace"
        if other in running:
            raise OverlayError(
                f"the {plane} data plane cannot start on this node: udp/{port} is taken by the "
                f"{other} data plane of network {running[other]} (a node runs one data plane per "
                f"data-path port; create the network with --dataplane {other} or auto)"
            )
        ns = netns_for(net["id"], self.node_id)
        vni = int(net["vni"])
        prefix = net["subnet"].split("/")[1]
        try:
            ifname, underlay_mtu = await asyncio.to_thread(links.underlay_for, self.addr)
            mtu = ipam.overlay_mtu(underlay_mtu, int(net.get("mtu") or 0))
            if net.get("encrypted"):
                from meshkit.net.vxlan.seal import OVERHEAD

                # a sealed frame carries 28 more bytes (key id, counter, tag): a full-size
                # inner frame must still fit the underlay without fragments
                mtu = max(min(mtu, underlay_mtu - ipam.OVERHEAD - OVERHEAD), ipam.MIN_MTU)
            await asyncio.to_thread(links.ensure_netns, ns)

            def bridge() -> None:
                with links.NsLinks(ns) as nl:
                    nl.ensure_bridge(
                        BRIDGE,
                        mtu=mtu,
                        mac=ipam.mac_for(endpoint),
                        addrs=[f"{net['gateway']}/{prefix}", f"{endpoint}/{prefix}"],
                    )
                    nl.set_route_source(BRIDGE, net["subnet"], endpoint)

            await asyncio.to_thread(bridge)
            built = _Net(
                id=net["id"],
                name=net["name"],
                vni=vni,
                subnet=net["subnet"],
                ns=ns,
                plane=plane,
                mtu=mtu,
                endpoint=endpoint,
                dev=f"vx-{vni}" if plane == "kernel" else f"tap-{vni}",
                encrypted=bool(net.get("encrypted")),
            )
            if plane == "kernel":
                await asyncio.to_thread(
                    links.create_vxlan,
                    ns,
                    built.dev,
                    vni=vni,
                    port=port,
                    local=self.addr,
                    underlay_ifname=ifname,
                    mtu=mtu,
                    bridge=BRIDGE,
                )
            else:
                await self._build_tap(built, port)
        except links.LinkError as exc:
            raise OverlayError(str(exc)) from None
        except (OSError, DataplaneError) as exc:
            # e.g. the data-path port is held by the kernel's VXLAN socket of another network
            raise OverlayError(f"network {net['name']}: {exc}") from None
        from meshkit.net.probe import PROBE_PORT
        from meshkit.net.probe_io import ProbeSocket

        try:
            built.probe = await ProbeSocket.open(
                ns, endpoint, PROBE_PORT, node_id=self.node_id, max_size=mtu
            )
        except OSError as exc:
            log.warning("overlay network %s: no probes: %s", net["name"], exc)
        log.info(
            "overlay network %s (vni %d) up in %s: %s data plane, mtu %d",
            net["name"],
            vni,
            ns,
            plane,
            mtu,
        )
        return built

    async def _build_tap(self, built: _Net, port: int) -> None:
        from meshkit.net import links
        from meshkit.net.vxlan import plane as dataplane

        if self._dataplane is None:
            dp = dataplane.UserspaceDataplane(self.addr, port)
            dp.start()
            self._dataplane = dp

        # a leftover TAP of an earlier agent run sits in the namespace: replace it
        def fresh_tap() -> int:
            with links.NsLinks(built.ns) as nl:
                nl.delete_link(built.dev)
            # the plane opens the TAP the way it reads it (with a virtio header and TSO for C)
            fd = int(self._dataplane.open_tap(built.dev))
            try:
                links.move_link(built.dev, built.ns, bridge=BRIDGE, mtu=built.mtu)
            except BaseException:
                os.close(fd)
                raise
            return fd

        built.tap_fd = await asyncio.to_thread(fresh_tap)
        self._dataplane.add_network(built.vni, built.tap_fd)
        if built.encrypted:  # sealed from the first frame: with no key yet, nothing leaves
            self._dataplane.set_keys(built.vni, [], 0)

    async def _program(self, built: _Net, net: Mapping[str, Any]) -> None:
        from meshkit.net import links

        nodes = self._map.get("nodes") or {}
        if built.encrypted:
            self._take_keys(built, self._netkeys.get(built.id) or [])
        tables = peer_tables(net, self.node_id, nodes)
        if tables != built.tables:
            fdb, neigh = tables
            if built.plane == "kernel":

                def sync() -> int:
                    with links.NsLinks(built.ns) as nl:
                        return links.sync_fdb_neigh(nl, built.dev, fdb, neigh)

                try:
                    await asyncio.to_thread(sync)
                except links.LinkError as exc:
                    raise OverlayError(str(exc)) from None
            else:
                from meshkit.net.vxlan.plane import DataplaneError

                try:
                    self._dataplane.set_peers(built.vni, fdb, neigh)
                except DataplaneError as exc:
                    raise OverlayError(f"userspace data plane: {exc}") from None
            built.tables = tables
        if built.probe is not None:
            peers = {
                ep["node_id"]: ep["ip"]
                for ep in net["endpoints"]
                if not ep["task_id"] and ep["node_id"] != self.node_id and ep["node_id"] in nodes
            }
            built.probe.set_peers(peers)

    async def _remove(self, built: _Net) -> None:
        from meshkit.net import links

        if built.switch is not None:
            built.switch.cancel()
        built.keys = []
        if built.probe is not None:
            built.probe.close()
        if built.plane == "userspace" and self._dataplane is not None:
            self._dataplane.remove_network(built.vni)
        if built.tap_fd is not None:
            with contextlib.suppress(OSError):
                os.close(built.tap_fd)
        try:
            await asyncio.to_thread(links.delete_netns, built.ns)
        except links.LinkError as exc:
            log.warning("overlay network %s: %s", built.name, exc)
        if not any(n.plane == "userspace" for n in self._nets.values()) and self._dataplane:
            self._dataplane.close()
            self._dataplane = None
        log.info("overlay network %s removed from this node", built.name)

    # -- tasks ---------------------------------------------------------------------------------

    async def attach(self, task_id: str, task_ns: str, attachments: list[dict[str, Any]]) -> None:
        """Plug a task's namespace into each of its networks (eth0, eth1, ...), with its address,
        the overlay MTU and a resolv.conf naming 127.0.0.11."""
        from meshkit.net import links

        for idx, att in enumerate(attachments):
            built = await self._wait_ready(att["id"], att.get("name", att["id"]))

            def plug(built: _Net = built, idx: int = idx, att: dict[str, Any] = att) -> None:
                with links.NsLinks(built.ns) as nl:
                    nl.ensure_veth_to_task(
                        bridge=BRIDGE,
                        local_ifname=f"v{task_id[:11]}{idx}",
                        task_ns=task_ns,
                        task_ifname=f"eth{idx}",
                        mac=att["mac"],
                        addr_cidr=att["addr"],
                        mtu=built.mtu,
                    )

            try:
                await asyncio.to_thread(plug)
            except links.LinkError as exc:
                raise OverlayError(f"network {att.get('name')}: {exc}") from None
        if attachments:
            await asyncio.to_thread(write_resolv_conf, task_ns)
        if self.gateway is not None and self.wants_gateway(attachments):
            from meshkit.net.gateway import GatewayError

            try:
                await self.gateway.attach(task_id, task_ns)
            except GatewayError as exc:
                # the task still runs, on its overlays, without a way out
                log.error("gateway: %s", exc)

    def wants_gateway(self, attachments: list[dict[str, Any]]) -> bool:
        """A task gets the gateway interface when one of its networks is not internal."""
        nets = self._map.get("networks") or {}
        return any(not (nets.get(att["id"]) or {}).get("internal") for att in attachments)

    async def detach(self, task_id: str) -> None:
        """The task's namespace is gone: its gateway address is free again."""
        if self.gateway is not None:
            await self.gateway.release(task_id)

    async def _wait_ready(self, net_id: str, name: str) -> _Net:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ATTACH_WAIT
        while True:
            built = self._nets.get(net_id)
            if built is not None and built.ready.is_set():
                return built
            if net_id in self._errors:
                raise OverlayError(f"network {name}: {self._errors[net_id]}")
            left = deadline - loop.time()
            if left <= 0:
                raise OverlayError(
                    f"network {name} is not set up on this node yet (no network map from a "
                    "manager?)"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    # -- probes and reports --------------------------------------------------------------------

    async def _control_loop(self) -> None:
        from meshkit.net.probe_io import control_reachable

        while not self._closed:
            nodes = dict(self._map.get("nodes") or {})
            peers = {nid: n for nid, n in nodes.items() if nid != self.node_id}
            if peers and self._nets:
                results = await asyncio.gather(
                    *(
                        control_reachable(str(n["addr"]), int(n.get("api_port") or 2377), 2.0)
                        for n in peers.values()
                    ),
                    return_exceptions=True,
                )
                self._control = {nid: ok is True for nid, ok in zip(peers, results, strict=True)}
            if self.gateway is not None:
                await self.gateway.check()
            await asyncio.sleep(CONTROL_EVERY)

    async def close(self, remove: bool) -> None:
        """Stop probing; with `remove`, also take this node's networks down (leaving the
        cluster). Without it, kernel networks keep forwarding while the agent restarts."""
        self._closed = True
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
        async with self._lock:
            for built in self._nets.values():
                if built.probe is not None:
                    built.probe.close()
                    built.probe = None
            if remove:
                for net_id in list(self._nets):
                    await self._remove(self._nets.pop(net_id))
                if self.gateway is not None:
                    await self.gateway.remove()
            if self._dataplane is not None:
                self._dataplane.close()
                self._dataplane = None


def write_resolv_conf(task_ns: str) -> None:
    """/etc/netns/<ns>/resolv.conf, which `ip netns exec` and the task's launcher bind over
    /etc/resolv.conf, so names resolve through the DNS server at 127.0.0.11."""
    folder = RESOLV_DIR / task_ns
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".resolv.conf.tmp"
    tmp.write_text(RESOLV_CONF)
    os.replace(tmp, folder / "resolv.conf")
