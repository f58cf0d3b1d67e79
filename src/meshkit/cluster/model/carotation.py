"""CA rotation (`meshkit cluster ca --rotate`) in the replicated state, sans-IO.

Swarm's order, in three phases kept in ``ClusterState.ca_rotation``:

1. ``trust``: a new root exists (its key sealed in the record) and the bundle served to nodes
   holds both roots; certificates are still signed by the old root. Every node renews once to
   take the two-root bundle.
2. ``sign``: once every live node has it, the new root signs (``ca_cert_pem``/``ca_key_pem``
   become the new root's); node certificates are sent with the new root cross-signed by the
   old one after them. Every node renews again: its certificate now chains to the new root.
   The join tokens change here (their digest is the signing root's; the secrets are new).
3. ``drop``: the old root leaves the bundle; every node renews to trust the new root only.
   Then the record is cleared, keeping the retired roots' token digests so that an old token
   is refused with a message that says why.

Progress is counted by ``ca_rotate_ack`` commands: a node acks the phase after it took the
renewed certificate into use. "Every live node" is every node not Down at the time of an ack
(a Down node renews when it comes back; see the notes on what that cannot do yet).
Commands:

    ca_rotate_start  rotation {id, new_cert, new_key (sealed), cross, new_worker_secret,
                     new_manager_secret (both sealed), old_digest}, now
    ca_rotate_ack    id, phase, node_id
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshkit.cluster.model.records import DOWN, ClusterState, CommandError

PHASES = ("trust", "sign", "drop")
RETIRED_KEPT = 5
"""Token digests of retired roots remembered for the "rotated" message."""


def active(state: ClusterState) -> dict[str, Any] | None:
    """The rotation in progress, or None."""
    rot = state.ca_rotation
    return rot if rot and rot.get("phase") in PHASES else None


def bundle(state: ClusterState) -> str:
    """The CA bundle nodes must trust now (PEM): one root, or two during a rotation."""
    rot = active(state)
    if rot is None:
        return state.ca_cert_pem
    if rot["phase"] == "trust":
        return state.ca_cert_pem + str(rot["new_cert"])
    if rot["phase"] == "sign":
        return state.ca_cert_pem + str(rot["old_cert"])
    return state.ca_cert_pem


def chain_extra(state: ClusterState) -> str:
    """What follows a node certificate in its chain: the cross-signed new root while some node
    may still trust only the old one (phase sign), else nothing."""
    rot = active(state)
    return rot["cross"] if rot is not None and rot["phase"] == "sign" else ""


def required(state: ClusterState) -> list[str]:
    """The nodes a phase waits for: every node that is not Down."""
    return sorted(n.id for n in state.nodes.values() if n.status != DOWN)


def progress(state: ClusterState) -> dict[str, Any]:
    """`cluster ca --rotate`'s figures: phase, nodes done out of the nodes waited for."""
    rot = active(state)
    if rot is None:
        return {"phase": "", "done": 0, "total": len(required(state)), "id": ""}
    need = required(state)
    done = [n for n in need if n in rot.get("done", [])]
    # each node renews once per phase: the figure counts phases done over all nodes
    step = PHASES.index(rot["phase"])
    return {
        "phase": rot["phase"],
        "id": rot["id"],
        "done": len(done),
        "total": len(need),
        "nodes_done": step * len(need) + len(done),
        "nodes_total": len(PHASES) * len(need),
    }


def op_ca_rotate_start(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    if active(state) is not None:
        raise CommandError(
            f"a CA rotation is already in progress (phase {state.ca_rotation['phase']}): "
            "wait for it with `meshkit cluster ca --rotate`"
        )
    rot = dict(cmd["rotation"])
    for key in ("id", "new_cert", "new_key", "cross", "new_worker_secret", "new_manager_secret"):
        if not isinstance(rot.get(key), str) or not rot[key]:
            raise CommandError(f"ca_rotate_start: {key} is missing")
    retired = list((state.ca_rotation or {}).get("retired", []))
    state.ca_rotation = {
        **rot,
        "phase": "trust",
        "done": [],
        "started_at": float(cmd.get("now", 0.0)),
        "retired": retired,
    }
    return {"id": rot["id"], "phase": "trust"}


def _advance(state: ClusterState, rot: dict[str, Any]) -> None:
    """Move to the next phase (every live node acked this one)."""
    if rot["phase"] == "trust":
        rot["retired"] = [*rot.get("retired", []), rot.get("old_digest", "")][-RETIRED_KEPT:]
        rot["old_cert"] = state.ca_cert_pem
        state.ca_cert_pem = rot.pop("new_cert")
        state.ca_key_pem = rot.pop("new_key")  # the old key goes: nothing signs with it now
        state.worker_secret = rot.pop("new_worker_secret")
        state.manager_secret = rot.pop("new_manager_secret")
        rot["phase"] = "sign"
    elif rot["phase"] == "sign":
        rot["phase"] = "drop"
        rot.pop("cross", None)
        rot.pop("old_cert", None)
    else:
        state.ca_rotation = {"retired": rot.get("retired", []), "last": rot["id"]}
        return
    rot["done"] = []


def op_ca_rotate_ack(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    rot = active(state)
    node_id = str(cmd.get("node_id", ""))
    if rot is None or rot["id"] != cmd.get("id") or rot["phase"] != cmd.get("phase"):
        return {"phase": rot["phase"] if rot else "", "stale": True}
    if node_id not in state.nodes:
        raise CommandError(f"node {node_id} is not in this cluster")
    if node_id not in rot["done"]:
        rot["done"] = sorted([*rot["done"], node_id])
    if set(required(state)) <= set(rot["done"]):
        _advance(state, rot)
    now = active(state)
    return {"phase": now["phase"] if now else "", "stale": False}


def retired_digests(state: ClusterState) -> list[str]:
    """Token digests of roots a rotation retired (their tokens get a clear refusal)."""
    return [d for d in (state.ca_rotation or {}).get("retired", []) if d]


IDEMPOTENT = frozenset({"ca_rotate_ack"})

HANDLERS = {
    "ca_rotate_start": op_ca_rotate_start,
    "ca_rotate_ack": op_ca_rotate_ack,
}
