"""Overlay networks in the replicated cluster state (sans-IO): the commands raft applies for
them, the address bookkeeping that rides on node and task commands, and the network map every
node's overlay is built from.

A network record (``state.networks[id]``)::

    {"id", "name", "driver": "overlay", "subnet", "gateway", "vni", "mtu" (0 = underlay - 50),
     "dataplane": "auto"|"kernel"|"userspace", "labels", "created_at",
     "encrypted": bool,                            # sealed between nodes: userspace plane
     "keys": [sealed key record],                  # encrypted only: meshkit.cluster.model.netkeys
     "ipam": {"next", "addrs": {ip: owner}},      # see meshkit.net.ipam
     "endpoints": {node_id: ip}}                   # each node's own address on the network

A task of a service with networks gets, when it is created, one attachment per network:
``task["networks"] = [{"id", "name", "addr": "ip/prefix", "mac"}]``; the addresses go back to
the book when the task reaches an end state or is removed. A service that publishes a port in
ingress mode is on the cluster's own ``ingress`` network too (made with the first such service,
as Docker's routing mesh has one), and so are its tasks. A service in vip endpoint mode holds
one virtual IP per network, ``service["vips"] = {network id: ip}``, owned "vip:<service id>".
Every node gets an endpoint address on every network (its bridge's address, which the overlay
probes use), from the moment the node or the network is added.

Every node also gets a subnet of its own for its gateway bridge (``state.gateway_subnets``,
node id -> CIDR): one /mask-length of the cluster's address pools, carved from the end of the
pools (overlays are carved from the start) and counted as taken by both, so a gateway subnet
never overlaps an overlay subnet or another node's. With the default pool 198.19.0.0/16 the
first node gets 198.19.255.0/24, the next 198.19.254.0/24, and so on. A task with at least
one network that is not ``internal`` gets an address on its node's gateway bridge (handed out
by the node itself, meshkit.net.gateway) and its default route through it.

Everything here runs inside `apply()` on every manager, so it reads nothing but the state and
the command. Errors are `NetError`; the state module turns them into the caller's error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.model import gwcarve
from meshkit.cluster.model.records import ClusterState
from meshkit.cluster.model.services import TERMINAL, task_is_up, task_name
from meshkit.net import ipam

DATAPLANES = ("auto", "kernel", "userspace")
INGRESS = "ingress"  # the routing mesh's network, made by the cluster itself
DRIVERS = ("overlay",)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class NetError(MeshkitError):
    """A network command the state refuses; the message says why."""


def find_network(networks: Mapping[str, dict[str, Any]], ref: str) -> dict[str, Any]:
    """A network by full id, name, or unique id prefix (as Docker resolves them)."""
    if ref in networks:
        return networks[ref]
    by_name = [n for n in networks.values() if n["name"] == ref]
    if len(by_name) == 1:
        return by_name[0]
    by_prefix = [n for n in networks.values() if ref and n["id"].startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise NetError(f"network {ref} is ambiguous ({len(by_prefix)} matches)")
    raise NetError(f"network {ref} not found")


def check_request(req: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `network create` a client sent, checked (no allocation yet)."""
    name = str(req.get("name") or "")
    if not NAME_RE.match(name):
        raise NetError(
            f"invalid network name {name!r}: 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    driver = str(req.get("driver") or "overlay")
    if driver not in DRIVERS:
        raise NetError(f"network driver {driver!r} is not supported: only overlay")
    dataplane = str(req.get("dataplane") or "auto")
    if dataplane not in DATAPLANES:
        raise NetError(f"invalid data plane {dataplane!r}: expected auto, kernel or userspace")
    encrypted = bool(req.get("encrypted"))
    if encrypted and dataplane == "kernel":
        raise NetError(
            "an encrypted network needs the userspace data plane (this kernel path has no "
            "AEAD to seal VXLAN with): drop --dataplane kernel"
        )
    if encrypted:
        dataplane = "userspace"  # every node of it: the kernel plane cannot seal
    mtu = int(req.get("mtu") or 0)
    if mtu and not ipam.MIN_MTU <= mtu <= 65535 - ipam.OVERHEAD:
        raise NetError(f"invalid mtu {mtu}: expected {ipam.MIN_MTU} to {65535 - ipam.OVERHEAD}")
    out: dict[str, Any] = {
        "id": str(req.get("id") or ""),
        "name": name,
        "driver": driver,
        "subnet": str(req.get("subnet") or ""),
        "gateway": str(req.get("gateway") or ""),
        "mtu": mtu,
        "dataplane": dataplane,
        "labels": {str(k): str(v) for k, v in dict(req.get("labels") or {}).items()},
        "internal": bool(req.get("internal")),
        "encrypted": encrypted,
        "attachable": bool(req.get("attachable")),
    }
    try:
        if out["subnet"]:
            ipam.parse_subnet(out["subnet"])
            ipam.check_gateway(out["subnet"], out["gateway"] or None)
        elif out["gateway"]:
            raise NetError("--gateway needs a --subnet")
    except ipam.IpamError as exc:
        raise NetError(str(exc)) from None
    return out


# -- commands ----------------------------------------------------------------------------------


def op_network_create(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    req = check_request(cmd["network"])
    networks: dict[str, dict[str, Any]] = state.networks
    if not req["id"]:
        raise NetError("a network needs an id")
    if req["id"] in networks:
        raise NetError(f"network {req['id']} already exists")
    if any(n["name"] == req["name"] for n in networks.values()):
        raise NetError(f"network with name {req['name']} already exists")
    if req["name"] == INGRESS and not cmd.get("ingress"):
        raise NetError(
            "the name ingress is the routing mesh's network, which the cluster makes itself "
            "for services that publish ports"
        )
    return _create(state, req, cmd)


def taken_subnets(state: ClusterState) -> list[str]:
    """Every subnet of the pools in use: the networks' and the nodes' gateway subnets."""
    return [n["subnet"] for n in state.networks.values()] + list(state.gateway_subnets.values())


def _create(state: ClusterState, req: dict[str, Any], cmd: Mapping[str, Any]) -> dict[str, Any]:
    networks: dict[str, dict[str, Any]] = state.networks
    taken = taken_subnets(state)
    try:
        if req["subnet"]:
            gw_net = ipam.parse_subnet(req["subnet"])
            for node_id, gw in sorted(state.gateway_subnets.items()):
                if gw_net.overlaps(ipam.parse_subnet(gw)):
                    node = state.nodes.get(node_id)
                    raise NetError(
                        f"network {req['name']}: subnet {gw_net} overlaps the subnet {gw} of "
                        f"the gateway bridge of node {node.hostname if node else node_id}"
                    )
            subnet = ipam.check_subnet(req["subnet"], taken)
        else:
            subnet = ipam.carve_subnet(
                state.default_addr_pool, state.default_addr_pool_mask_length, taken
            )
        gateway = ipam.check_gateway(subnet, req["gateway"] or None)
        vni = ipam.pick_vni(n["vni"] for n in networks.values())
        book = ipam.new_book(subnet, gateway)
        endpoints = {
            node_id: ipam.allocate(book, subnet, f"node:{node_id}")
            for node_id in sorted(state.nodes)
        }
    except ipam.IpamError as exc:
        raise NetError(f"network {req['name']}: {exc}") from None
    record = dict(
        req,
        subnet=subnet,
        gateway=gateway,
        vni=vni,
        created_at=float(cmd.get("now", 0.0)),
        ipam=book,
        endpoints=endpoints,
        ingress=bool(cmd.get("ingress")),
    )
    networks[record["id"]] = record
    return {"id": record["id"], "name": record["name"], "subnet": subnet, "vni": vni}


def publishes_ingress(spec: Mapping[str, Any]) -> bool:
    """Whether a service (or task) spec publishes a port through the routing mesh."""
    return any(p.get("mode") == "ingress" and p.get("published") for p in spec.get("ports") or [])


def spec_networks(state: ClusterState, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The networks a service or task spec is on: its own, then the ingress network when it
    publishes through the routing mesh (NetError for a network that does not exist)."""
    nets = [find_network(state.networks, str(ref)) for ref in spec.get("networks") or []]
    if publishes_ingress(spec):
        ingress = ingress_network(state)
        if ingress is None:
            raise NetError("the ingress network does not exist")
        if all(n["id"] != ingress["id"] for n in nets):
            nets.append(ingress)
    return nets


def ingress_network(state: ClusterState) -> dict[str, Any] | None:
    return next((n for n in state.networks.values() if n.get("ingress")), None)


def users(state: ClusterState, net: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(services on the network, tasks holding an address on it)."""
    services = sorted(
        s["spec"]["name"]
        for s in state.services.values()
        if net["name"] in (s["spec"].get("networks") or [])
        or net["id"] in (s["spec"].get("networks") or [])
        or (net.get("ingress") and publishes_ingress(s["spec"]))
    )
    tasks = sorted(ipam.owners(net["ipam"], "task:").values())
    return services, tasks


def op_network_rm(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    net = find_network(state.networks, str(cmd["network_id"]))
    services, tasks = users(state, net)
    if services:
        raise NetError(
            f"network {net['name']} is in use by service {', '.join(services)}; "
            "remove the service or update it with --network-rm first"
        )
    if tasks:
        raise NetError(
            f"network {net['name']} is in use by {len(tasks)} task(s) still holding an address "
            f"({', '.join(t[:12] for t in tasks[:5])}); wait for them to end"
        )
    runs = ipam.owners(net["ipam"], "attach:")
    if runs:
        raise NetError(
            f"network {net['name']} is in use by {len(runs)} one-off task(s) of `meshkit run` "
            f"({', '.join(sorted(str(r) for r in runs.values())[:5])}); wait for them to end"
        )
    del state.networks[net["id"]]
    return {"id": net["id"], "name": net["name"]}


# -- bookkeeping on node and task commands -----------------------------------------------------


def node_added(state: ClusterState, node_id: str) -> None:
    """A new node gets its gateway subnet and its endpoint on every network (full pools or a
    full network leave it without one; its tasks then get no way out, or no address there)."""
    ensure_gateway_subnet(state, node_id)
    for net in state.networks.values():
        if node_id in net["endpoints"]:
            continue
        try:
            net["endpoints"][node_id] = ipam.allocate(net["ipam"], net["subnet"], f"node:{node_id}")
        except ipam.IpamError:
            continue


def ensure_gateway_subnet(state: ClusterState, node_id: str) -> str:
    """The node's gateway subnet, carved now when it has none ("" when the pools are full)."""
    if node_id in state.gateway_subnets:
        return state.gateway_subnets[node_id]
    try:
        # kept taken ranges: ipam.carve_subnet re-read all of them, O(nodes) per join
        return gwcarve.carve_gateway_subnet(state, node_id)
    except ipam.IpamError:
        return ""


def node_removed(state: ClusterState, node_id: str) -> None:
    from meshkit.cluster.model.attachments import node_gone

    node_gone(state, node_id)
    if state.gateway_subnets.pop(node_id, None) is not None:
        gwcarve.forget()
    for net in state.networks.values():
        net["endpoints"].pop(node_id, None)
        ipam.release(net["ipam"], f"node:{node_id}")


def attach_task(state: ClusterState, task: dict[str, Any]) -> str:
    """Give a new task an address on each network of its spec (in place); "" or the error
    that makes the task impossible (its addresses are then not held)."""
    attachments = []
    try:
        nets = spec_networks(state, task.get("spec") or {})
    except NetError as exc:
        return str(exc)
    for net in nets:
        try:
            ip = ipam.allocate(net["ipam"], net["subnet"], f"task:{task['id']}")
        except ipam.IpamError as exc:
            release_task(state, task["id"])
            return f"network {net['name']}: {exc}"
        attachments.append(
            {
                "id": net["id"],
                "name": net["name"],
                "addr": ipam.with_prefix(ip, net["subnet"]),
                "mac": ipam.mac_for(ip),
            }
        )
    task["networks"] = attachments
    return ""


def ensure_ingress(state: ClusterState, spec: Mapping[str, Any], cmd: Mapping[str, Any]) -> None:
    """Make the ingress network for the first service that publishes through the routing
    mesh. Its id comes from the command's service id, so every manager makes the same one."""
    if not publishes_ingress(spec) or ingress_network(state) is not None:
        return
    seed = str(cmd.get("service_id") or (cmd.get("service") or {}).get("id") or "")
    req = check_request({"id": f"ingress{seed}"[:25], "name": INGRESS})
    if req["id"] in state.networks:
        raise NetError(f"network {req['id']} already exists")
    if any(n["name"] == INGRESS for n in state.networks.values()):
        raise NetError(
            "a network named ingress exists but is not the routing mesh's; remove it first"
        )
    _create(state, req, {"ingress": True, "now": cmd.get("now", 0.0)})


def assign_vips(state: ClusterState, svc: dict[str, Any]) -> None:
    """Give a vip-mode service one virtual IP on each of its networks (kept across updates,
    given back for networks it left, all of them in dnsrr mode). NetError, with nothing
    allocated, when a network is full."""
    spec = svc["spec"]
    owner = f"vip:{svc['id']}"
    old: dict[str, str] = dict(svc.get("vips") or {})
    wanted = spec_networks(state, spec) if spec.get("endpoint_mode", "vip") == "vip" else []
    new: dict[str, str] = {}
    fresh: list[dict[str, Any]] = []
    for net in wanted:
        if net["id"] in old and net["ipam"]["addrs"].get(old[net["id"]]) == owner:
            new[net["id"]] = old[net["id"]]
            continue
        try:
            new[net["id"]] = ipam.allocate(net["ipam"], net["subnet"], owner)
        except ipam.IpamError as exc:
            for done in fresh:
                ipam.release(done["ipam"], owner)
            raise NetError(
                f"network {net['name']}: no address for the service's VIP: {exc}"
            ) from None
        fresh.append(net)
    for net_id in old:
        if net_id not in new and net_id in state.networks:
            ipam.release(state.networks[net_id]["ipam"], owner)
    svc["vips"] = new
    drop_unused_ingress(state)


def release_vips(state: ClusterState, service_id: str) -> None:
    for net in state.networks.values():
        ipam.release(net["ipam"], f"vip:{service_id}")
    drop_unused_ingress(state)


def release_task(state: ClusterState, task_id: str) -> None:
    for net in state.networks.values():
        ipam.release(net["ipam"], f"task:{task_id}")
    drop_unused_ingress(state)


def drop_unused_ingress(state: ClusterState) -> None:
    """The ingress network goes with the last service publishing through it, once no task or
    VIP holds an address on it (the next such service makes it again, on the data plane the
    nodes run then)."""
    net = ingress_network(state)
    if net is None or any(publishes_ingress(s["spec"]) for s in state.services.values()):
        return
    if ipam.owners(net["ipam"], "task:") or ipam.owners(net["ipam"], "vip:"):
        return
    del state.networks[net["id"]]


def set_overlay(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    """A node's overlay report (data planes, probe results), kept on its node record."""
    node = state.nodes.get(str(cmd["node_id"]))
    if node is None:
        return {"changed": False}
    overlay = dict(cmd.get("overlay") or {})
    changed = node.overlay != overlay
    node.overlay = overlay
    return {"changed": changed}


# -- the network map -----------------------------------------------------------------------------


def netmap(state: ClusterState) -> dict[str, Any]:
    """What every node's overlay is built from: the networks, each node's underlay address and
    every endpoint (node endpoints, and tasks assigned to a node and not ended yet)."""
    nodes = {
        n.id: {"addr": n.addr, "api_port": n.api_port, "hostname": n.hostname}
        for n in state.nodes.values()
    }
    nets: dict[str, Any] = {}
    for net in state.networks.values():
        endpoints = [
            {"ip": ip, "mac": ipam.mac_for(ip), "node_id": node_id, "task_id": ""}
            for node_id, ip in sorted(net["endpoints"].items())
            if node_id in nodes
        ]
        nets[net["id"]] = {
            k: net[k] for k in ("id", "name", "subnet", "gateway", "vni", "mtu", "dataplane")
        } | {
            "endpoints": endpoints,
            "ingress": bool(net.get("ingress")),
            "internal": bool(net.get("internal")),
            "encrypted": bool(net.get("encrypted")),
            # which key generations exist (never the keys): a rotation changes the map, so
            # the nodes' long polls wake and fetch their keys with it
            "key_ids": [int(k["id"]) for k in net.get("keys") or []],
        }
    for net in state.networks.values():  # one-off tasks of `meshkit run` (model.attachments)
        for att in (net.get("attached") or {}).values():
            if att.get("state") == "running" and att["node_id"] in nodes and net["id"] in nets:
                nets[net["id"]]["endpoints"].append(
                    {"ip": att["addr"].split("/")[0], "mac": att["mac"],
                     "node_id": att["node_id"], "task_id": att["id"], "run": True}
                )  # fmt: skip
    if nets:
        for task in state.tasks.values():
            if not task.get("networks") or not task.get("node_id"):
                continue
            if task["state"] in TERMINAL or task["node_id"] not in nodes:
                continue
            for att in task["networks"]:
                if att["id"] in nets:
                    ip = att["addr"].split("/")[0]
                    nets[att["id"]]["endpoints"].append(
                        {
                            "ip": ip,
                            "mac": att["mac"],
                            "node_id": task["node_id"],
                            "task_id": task["id"],
                        }
                    )
    return {
        "data_path_port": state.data_path_port,
        "nodes": nodes,
        "gateways": {nid: s for nid, s in state.gateway_subnets.items() if nid in nodes},
        "networks": nets,
        "services": service_map(state, nodes),
    }


def service_map(state: ClusterState, nodes: Mapping[str, Any]) -> dict[str, Any]:
    """What DNS, the VIPs and the published ports are built from on every node: each service,
    its VIPs and its tasks placed on a node and not ended, with whether each may take traffic."""

    out: dict[str, Any] = {}
    # A task on no network is in no DNS answer, VIP or ingress backend (all of them go to
    # overlay addresses): only a port in host mode needs it (the nodes running one listen).
    # Leaving the others out keeps the map (built on every manager and sent to every node)
    # from growing, and changing, with every task of a service on no network: a global one
    # on 5,000 nodes put 5,000 entries in it and a new version at each of their reports.
    needs_all: set[str] = set()
    for svc in state.services.values():
        spec = svc["spec"]
        if any(p.get("published") and p.get("mode") == "host" for p in spec.get("ports") or []):
            needs_all.add(svc["id"])
        out[svc["id"]] = {
            "id": svc["id"],
            "name": spec["name"],
            "endpoint_mode": spec.get("endpoint_mode", "vip"),
            "ports": [
                {
                    "target": p["target"],
                    "published": p["published"],
                    "protocol": p["protocol"],
                    "mode": p["mode"],
                    "proxy_protocol": bool(p.get("proxy_protocol")),
                }
                for p in spec.get("ports") or []
            ],
            "vips": dict(svc.get("vips") or {}),
            "tasks": [],
        }
    shown = [
        t
        for t in state.tasks.values()
        if (t.get("networks") or t["service_id"] in needs_all)
        and t["service_id"] in out
        and t["state"] not in TERMINAL
        and t.get("node_id") in nodes
    ]
    for task in sorted(shown, key=lambda t: (t.get("slot") or 0, t["id"])):
        entry = out[task["service_id"]]
        entry["tasks"].append(
            {
                "id": task["id"],
                "name": task_name(task),
                "slot": int(task.get("slot") or 0),
                "node_id": task["node_id"],
                "up": task_is_up(task) and task.get("desired_state") == "running",
                "addrs": {
                    att["id"]: att["addr"].split("/")[0] for att in task.get("networks") or []
                },
            }
        )
    return out


def network_view(state: ClusterState, net: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON shape of `network inspect` (Docker's names where Docker has the field)."""
    services, tasks = users(state, net)
    planes = {}
    for node in state.nodes.values():
        chosen = (node.overlay.get("dataplanes") or {}).get(net["id"])
        if chosen:
            planes[node.hostname or node.id] = chosen
    return {
        "ID": net["id"],
        "Name": net["name"],
        "Driver": net["driver"],
        "Scope": "swarm",
        "Internal": bool(net.get("internal")),
        "Attachable": bool(net.get("attachable")),
        "Created": net["created_at"],
        "IPAM": {"Config": [{"Subnet": net["subnet"], "Gateway": net["gateway"]}]},
        "Options": {
            "vni": str(net["vni"]),
            "mtu": str(net["mtu"])
            if net["mtu"]
            else f"auto (underlay - {78 if net.get('encrypted') else 50})",
            "dataplane": net["dataplane"],
            **({"encrypted": "true"} if net.get("encrypted") else {}),
        },
        "DataPlanes": planes,
        "Labels": dict(net.get("labels") or {}),
        "Peers": [
            {
                "Name": state.nodes[nid].hostname,
                "NodeID": nid,
                "IP": state.nodes[nid].addr,
                "EndpointIP": ip,
            }
            for nid, ip in sorted(net["endpoints"].items())
            if nid in state.nodes
        ],
        "Services": services,
        "Tasks": len(tasks),
        "AddressesInUse": len(net["ipam"]["addrs"]),
        "Attached": _attached_views(net, state),
    }


def _attached_views(net: Mapping[str, Any], state: ClusterState) -> list[dict[str, Any]]:
    from meshkit.cluster.model.attachments import views

    return views(net, state)
