"""The keys of encrypted overlay networks on the managers: the leader makes and rotates them
(meshkit.cluster.model.netkeys says when), and every manager hands a node the keys of the
networks it is a member of, with its network map, over the nodes' mutual-TLS channel.

    network_rotate_key {"network"} -> {"network_id", "key_ids"}   (manager: rotate now)

A key is 32 random bytes plus a 4-byte salt (os.urandom on the leader), sealed with the cluster
data key before it is proposed to raft; nodes get it opened, base64, in the reply of
``netmap_watch`` (``netkeys``: {network id: [{"id", "key"}]}) and keep it in memory only.

Settings: the rotation interval is MESHKIT_NETKEY_ROTATION on the leader when set (an
override for tests and emergencies), else the cluster's ``encryption_key_rotation`` (seconds,
``meshkit cluster update --encryption-key-rotation``, 12 h by default); the grace window for
old keys MESHKIT_NETKEY_GRACE, else 10 min.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Any

from meshkit.cluster.api.common import loaded_state
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import netkeys as rules
from meshkit.cluster.model.records import ClusterState
from meshkit.cluster.rpc.transport import RpcError

log = logging.getLogger("meshkit.cluster.netkeys")

KEY_BYTES = 32 + 4  # key + salt


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %g", name, text, default)
        return default
    return max(value, rules.MIN_ROTATION if "ROTATION" in name else 0.0)


def rotation_interval(state: ClusterState) -> float:
    """Seconds between rotations (see the module docstring)."""
    configured = float(getattr(state, "encryption_key_rotation", 0) or 0)
    default = configured if configured > 0 else rules.DEFAULT_ROTATION
    if os.environ.get("MESHKIT_NETKEY_ROTATION"):
        return _env_seconds("MESHKIT_NETKEY_ROTATION", default)
    return max(default, rules.MIN_ROTATION)


def grace_window() -> float:
    return _env_seconds("MESHKIT_NETKEY_GRACE", rules.DEFAULT_GRACE)


async def _apply(node: NodeContext, st: ClusterState, step: rules.Plan, now: float) -> list[int]:
    keys = list(step.keep)
    if step.new_id is not None:
        net = st.networks[step.net_id]
        sealed = node.sealer.seal_bytes(os.urandom(KEY_BYTES), rules.aad(step.net_id, step.new_id))
        members = rules.members(net, st)
        keys.append(
            {
                "id": step.new_id,
                "sealed": sealed,
                "created_at": now,
                "members": members,
                "grace": step.grace,
            }
        )
    result = await node.submit(
        {"op": "netkeys_set", "network_id": step.net_id, "keys": keys, "seen": step.seen}
    )
    ids = [int(i) for i in (result.get("ok") or result).get("key_ids", [])]
    log.info("network %s keys now %s (%s)", step.net_id, ids, step.why)
    return ids


async def tick(node: NodeContext, now: float | None = None) -> int:
    """On the leader: make the key changes that are due; how many networks changed."""
    st = node.state
    if st is None or not st.initialized or not node.is_leader or not node.has_quorum:
        return 0
    now = time.time() if now is None else now
    changed = 0
    for step in rules.plan(st, now, rotation_interval(st), grace_window()):
        try:
            await _apply(node, st, step, now)
            changed += 1
        except Exception as exc:  # the next tick tries again
            log.warning("network %s: keys not changed: %s", step.net_id, exc)
    return changed


async def rotate(node: NodeContext, net_id: str) -> dict[str, Any]:
    """Rotate one encrypted network's key now (network_rotate_key)."""
    st = loaded_state(node)
    net = st.networks[net_id]
    if not net.get("encrypted"):
        raise RpcError("bad_request", f"network {net['name']} is not encrypted: it has no keys")
    now = time.time()
    seen = [int(k["id"]) for k in net.get("keys") or []]
    grace = grace_window()
    keep = rules.retained(list(net.get("keys") or []), now, grace)[-1:]
    step = rules.Plan(net_id, keep, (max(seen) + 1) if seen else 1, seen, "asked for", grace)
    ids = await _apply(node, st, step, now)
    return {"network_id": net_id, "key_ids": ids}


def keys_for(node: NodeContext, node_id: str) -> dict[str, list[dict[str, Any]]]:
    """The opened keys of the encrypted networks ``node_id`` is a member of, for its
    netmap_watch reply; a key this manager cannot open is left out (and logged)."""
    from meshkit.cluster.raft.sealing import SealError

    st = loaded_state(node)
    out: dict[str, list[dict[str, Any]]] = {}
    for net_id, records in rules.keys_for_node(st, node_id).items():
        opened = []
        for rec in records:
            try:
                raw = node.sealer.open_bytes(rec["sealed"], rules.aad(net_id, int(rec["id"])))
            except SealError as exc:
                log.warning("network %s key %s: %s", net_id, rec["id"], exc)
                continue
            opened.append({"id": int(rec["id"]), "key": base64.b64encode(raw).decode("ascii")})
        out[net_id] = opened
    return out
