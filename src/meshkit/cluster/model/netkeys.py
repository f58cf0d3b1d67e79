"""The keys of encrypted overlay networks in the replicated state (sans-IO): when the leader
makes a new one, which old ones stay, and which node may have which.

An encrypted network record holds ``keys``: a list of ``{"id", "sealed", "created_at",
"members", "grace"}``, oldest first. ``id`` is the key's generation (1, 2, ...; it travels in every
sealed frame), ``sealed`` the 36 bytes of key and salt sealed with the cluster data key
(AES-256-GCM, AAD ``netkey:<network id>:<id>``: meshkit.cluster.raft.sealing.seal_bytes), so the
journal and snapshots never hold a key in clear; ``members`` the node ids that were members
of the network (had an endpoint on it) when the key was made; ``grace`` how long the key
before it stays accepted once this one is made (seconds).

Rules (``plan``): a network gets a new key when it has none, when its newest key is older
than the rotation interval (12 hours unless the cluster says otherwise), when a node joined
the network since (so the newest key's members are all who hold it), or when a member of
its newest key has left the cluster (so a removed node never sees a key made after it went,
and traffic sealed after the rotation is closed to it). A key stays while it is the newest
or while its successor is younger than the grace window, so frames sealed with it by nodes
that have not switched yet still open. After a removal the window is REMOVAL_GRACE only: the
removed node holds the old key, which should not open (or seal) anything for long.

Command (applied by meshkit.cluster.model.state):

    netkeys_set  network_id, keys [record], seen [ids the proposer based it on]
                 (refused when the network's ids are no longer ``seen``: two proposers never
                 both rotate)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.cluster.model.records import ClusterState

DEFAULT_ROTATION = 12 * 3600.0
DEFAULT_GRACE = 600.0
MIN_ROTATION = 10.0
REMOVAL_GRACE = 30.0


class NetKeyError(ValueError):
    """A netkeys_set command the state refuses."""


def aad(net_id: str, key_id: int) -> str:
    """What a network key is sealed to: another record's key does not open as this one."""
    return f"netkey:{net_id}:{key_id}"


def members(net: Mapping[str, Any], state: ClusterState) -> list[str]:
    """The nodes that may hold the network's keys: those with an endpoint on it, in the
    cluster."""
    return sorted(n for n in net.get("endpoints") or {} if n in state.nodes)


@dataclass(frozen=True)
class Plan:
    """What the leader does for one network: keep these records, and make a new key."""

    net_id: str
    keep: list[dict[str, Any]]
    new_id: int | None  # the id of the key to make, None: only old keys leave
    seen: list[int]
    why: str
    grace: float = DEFAULT_GRACE  # how long the keys before the new one stay accepted


def plan(state: ClusterState, now: float, rotation: float, grace: float) -> list[Plan]:
    """The encrypted networks whose keys must change now."""
    out = []
    for net in sorted(state.networks.values(), key=lambda n: n["id"]):
        if not net.get("encrypted"):
            continue
        keys = list(net.get("keys") or [])
        seen = [int(k["id"]) for k in keys]
        why = ""
        new_grace = grace
        if not keys:
            why = "first key"
        else:
            newest = keys[-1]
            gone = set(newest.get("members") or []) - set(state.nodes)
            if gone:
                why = f"node(s) {', '.join(sorted(gone))} left the cluster"
                new_grace = min(grace, REMOVAL_GRACE)
            elif set(members(net, state)) - set(newest.get("members") or []):
                # a joining node gets the keys in use; a new one lists it as a member, so
                # that its removal later is seen (and rotated away) like anyone's
                why = "node(s) joined"
            elif now - float(newest["created_at"]) >= rotation:
                why = "rotation interval"
        # a key leaves once its successor is older than the grace window
        keep = retained(keys, now, grace)
        if why and why != "first key":
            keep = [keep[-1]]  # the newest stays accepted beside the new key, older ones go
        if why or len(keep) != len(keys):
            new_id = (max(seen) + 1) if why and seen else (1 if why else None)
            out.append(Plan(net["id"], keep, new_id, seen, why or "grace window over", new_grace))
    return out


def retained(keys: list[dict[str, Any]], now: float, grace: float) -> list[dict[str, Any]]:
    """The keys still accepted: the newest, and each one whose successor is younger than the
    successor's grace (``grace`` for records without one)."""
    out = []
    for i, key in enumerate(keys):
        after = keys[i + 1] if i + 1 < len(keys) else None
        if after is None or now - float(after["created_at"]) < float(after.get("grace", grace)):
            out.append(key)
    return out


def op_netkeys_set(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    from meshkit.cluster.model.networks import NetError

    net = state.networks.get(str(cmd.get("network_id")))
    if net is None:
        raise NetError(f"network {cmd.get('network_id')} not found")
    if not net.get("encrypted"):
        raise NetError(f"network {net['name']} is not encrypted: it has no keys")
    have = [int(k["id"]) for k in net.get("keys") or []]
    if have != [int(i) for i in cmd.get("seen") or []]:
        raise NetError(f"the keys of network {net['name']} changed meanwhile")
    keys: list[dict[str, Any]] = []
    for rec in cmd.get("keys") or []:
        keys.append(
            {
                "id": int(rec["id"]),
                "sealed": str(rec["sealed"]),
                "created_at": float(rec["created_at"]),
                "members": [str(m) for m in rec.get("members") or []],
                "grace": float(rec.get("grace", DEFAULT_GRACE)),
            }
        )
    ids = [int(rec["id"]) for rec in keys]
    if ids != sorted(set(ids)):
        raise NetError(f"network {net['name']}: key ids must rise: {ids}")
    net["keys"] = keys
    return {"network_id": net["id"], "key_ids": ids}


def keys_for_node(state: ClusterState, node_id: str) -> dict[str, list[dict[str, Any]]]:
    """The sealed key records each encrypted network gives ``node_id``: only networks it is
    a member of, only while it is in the cluster (a node that joins gets the keys in use)."""
    if node_id not in state.nodes:
        return {}
    out = {}
    for net in state.networks.values():
        if not net.get("encrypted") or node_id not in members(net, state):
            continue
        out[net["id"]] = list(net.get("keys") or [])
    return out
