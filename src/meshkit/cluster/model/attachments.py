"""One-off tasks attached to a network from the command line (`meshkit run --network NET`,
Docker's `docker run --network` on an attachable overlay), in the replicated state (sans-IO).

A network made with ``--attachable`` takes them; each holds an address there, owned
``attach:<id>``, kept on the network record::

    net["attached"] = {id: {"id", "name", "node_id", "addr": "ip/prefix", "mac", "state":
                            "running"|"exited", "exit_code", "command", "created_at",
                            "ended_at"}}

A running one is an endpoint of the network in the network map (so every node programs its
overlay for it, and its own node's DNS server answers it like a task); when it ends its address
goes back to the book, and its record goes too with ``--rm``, else it stays (the last
KEEP_ENDED per network) for ``network inspect`` to show with its exit code. A node that leaves
takes its running ones with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshkit.cluster.model.networks import NetError, find_network
from meshkit.cluster.model.records import ClusterState
from meshkit.net import ipam

KEEP_ENDED = 20
OWNER = "attach:"


def not_attachable(ref: str) -> str:
    """Docker's words for a network that does not take one-off tasks."""
    return (
        f"Could not attach to network {ref}: rpc error: code = PermissionDenied "
        f"desc = network {ref} not manually attachable"
    )


def running(net: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [a for a in (net.get("attached") or {}).values() if a.get("state") == "running"]


def op_network_attach(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    ref = str(cmd["network"])
    net = find_network(state.networks, ref)
    aid, node_id = str(cmd["id"]), str(cmd["node_id"])
    if not net.get("attachable"):
        raise NetError(not_attachable(ref))
    if node_id not in state.nodes:
        raise NetError(f"node {node_id} is not part of this cluster")
    attached: dict[str, Any] = net.setdefault("attached", {})
    if aid not in attached:
        name = str(cmd.get("name") or f"run-{aid[:12]}")
        for other in state.networks.values():
            for att in running(other):
                if att["name"] == name:
                    raise NetError(
                        f'Conflict. The name "{name}" is already in use by one-off task '
                        f"{att['id'][:12]} (running on network {other['name']})"
                    )
        try:
            ip = ipam.allocate(net["ipam"], net["subnet"], f"{OWNER}{aid}")
        except ipam.IpamError as exc:
            raise NetError(f"network {net['name']}: {exc}") from None
        attached[aid] = {
            "id": aid,
            "name": name,
            "node_id": node_id,
            "addr": ipam.with_prefix(ip, net["subnet"]),
            "mac": ipam.mac_for(ip),
            "state": "running",
            "exit_code": None,
            "command": [str(a) for a in cmd.get("command") or []][:64],
            "created_at": float(cmd.get("now", 0.0)),
            "ended_at": 0.0,
        }
    att = attached[aid]
    if att["node_id"] != node_id:
        raise NetError(f"one-off task {aid[:12]} runs on another node")
    return {
        "id": aid,
        "name": att["name"],
        "network_id": net["id"],
        "network": net["name"],
        "addr": att["addr"],
        "mac": att["mac"],
        "internal": bool(net.get("internal")),
    }


def _end(net: dict[str, Any], aid: str, exit_code: Any, now: float, rm: bool) -> None:
    ipam.release(net["ipam"], f"{OWNER}{aid}")
    attached: dict[str, Any] = net.get("attached") or {}
    if rm:
        attached.pop(aid, None)
        return
    att = attached[aid]
    if att["state"] == "running":
        att.update(state="exited", exit_code=exit_code, ended_at=now)
    ended = sorted(
        (a for a in attached.values() if a["state"] != "running" and a["id"] != aid),
        key=lambda a: a["ended_at"],
    )
    for old in ended[: max(0, len(ended) + 1 - KEEP_ENDED)]:  # (+1: the one just ended)
        del attached[old["id"]]


def op_network_detach(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    aid = str(cmd["id"])
    code = cmd.get("exit_code")
    for net in state.networks.values():
        if aid in (net.get("attached") or {}):
            owner = net["attached"][aid]["node_id"]
            if cmd.get("node_id") and cmd["node_id"] != owner:
                raise NetError(f"one-off task {aid[:12]} runs on another node")
            _end(net, aid, None if code is None else int(code), float(cmd.get("now", 0.0)),
                 bool(cmd.get("rm")))  # fmt: skip
            return {"id": aid, "network": net["name"]}
    return {"id": aid, "network": ""}  # already gone (sent twice)


def node_gone(state: ClusterState, node_id: str) -> None:
    """A node left: its one-off tasks ended with it."""
    for net in state.networks.values():
        for att in running(net):
            if att["node_id"] == node_id:
                _end(net, att["id"], None, 0.0, False)


def views(net: Mapping[str, Any], state: ClusterState) -> list[dict[str, Any]]:
    """`network inspect`'s list of them (Docker shows containers; these are processes)."""
    out = []
    for att in sorted((net.get("attached") or {}).values(), key=lambda a: a["created_at"]):
        node = state.nodes.get(att["node_id"])
        out.append(
            {
                "ID": att["id"],
                "Name": att["name"],
                "Node": node.hostname if node else att["node_id"],
                "IPv4Address": att["addr"] if att["state"] == "running" else "",
                "State": att["state"],
                "ExitCode": att["exit_code"],
                "Command": list(att.get("command") or []),
            }
        )
    return out
