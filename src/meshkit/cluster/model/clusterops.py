"""The cluster-wide commands: `cluster_update` (Docker's `swarm update` settings) and
`force_new_cluster` (the first command of a cluster rebuilt from one manager's state).

    cluster_update      settings {heartbeat_period?, task_history_limit?, cert_lifetime?,
                        autolock?, unlock_key? (sealed), encryption_key_rotation?}, now
    force_new_cluster   state {...the whole ClusterState...}, node_id, raft_secret?, now

`force_new_cluster` makes the old state the new cluster's, with `node_id` its only manager:
every other manager becomes a worker marked Down (their raft replicas are gone; the leader's
membership reconciliation would otherwise put them back into raft, and a majority of dead
members is what had to be escaped). Workers keep their records and tasks: they find the manager
through its unchanged address and beat again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from meshkit.cluster.model import carotation
from meshkit.cluster.model.records import DOWN, READY, ClusterState, CommandError

if TYPE_CHECKING:
    from meshkit.cluster.model.state import Liveness

SETTINGS = (
    "heartbeat_period",
    "task_history_limit",
    "cert_lifetime",
    "autolock",
    "unlock_key",
    "encryption_key_rotation",
)


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a cluster_update, checked (CommandError names the bad one)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise CommandError(f"unknown cluster setting {key!r}")
        if key in ("heartbeat_period", "cert_lifetime", "encryption_key_rotation"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise CommandError(f"cluster setting {key} must be a positive number of seconds")
            if key == "cert_lifetime" and value < 3600:
                raise CommandError("the certificate expiry must be at least 1h")
            out[key] = float(value)
        elif key == "task_history_limit":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CommandError("the task history limit must be a whole number >= 0")
            out[key] = value
        elif key == "autolock":
            if not isinstance(value, bool):
                raise CommandError("autolock is true or false")
            out[key] = value
        else:
            out[key] = str(value)
    if out.get("autolock") and "unlock_key" in out and not out["unlock_key"]:
        raise CommandError("autolock needs an unlock key")
    return out


def op_cluster_update(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    settings = check_settings(dict(cmd.get("settings") or {}))
    changed = sorted(k for k, v in settings.items() if getattr(state, k) != v)
    for key, value in settings.items():
        setattr(state, key, value)
    if not state.autolock:
        state.unlock_key = ""
    return {"changed": changed}


def op_force_new_cluster(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    if state.initialized:
        raise CommandError(f"this cluster is already initialized (cluster id {state.cluster_id})")
    new = ClusterState.from_dict(cmd["state"])
    node_id = str(cmd.get("node_id", ""))
    me = new.nodes.get(node_id)
    if not new.cluster_id or me is None:
        raise CommandError("force_new_cluster needs a state that holds this node")
    now = float(cmd.get("now", 0.0))
    demoted = []
    for node in new.nodes.values():
        if node.id != node_id and node.role == "manager":
            node.role = "worker"
            node.status = DOWN
            node.updated_at = now
            demoted.append(node.id)
    if cmd.get("raft_secret"):  # a new one (sealed): the old managers' cannot join this raft
        new.raft_secret = str(cmd["raft_secret"])
    me.role = "manager"
    me.status = READY
    me.updated_at = now
    new.index = state.index
    state.__dict__.update(new.__dict__)
    return {"cluster_id": state.cluster_id, "node_id": node_id, "demoted": sorted(demoted)}


def retime_liveness(old: Liveness, period: float, node_ids: Iterable[str], now: float) -> Liveness:
    """The leader's beat tracker for a new heartbeat period. A node alive now stays alive at
    least one old period more (it learns the new period only at its next beat); a node that is
    Down stays Down until it beats again (a longer grace must not bring it back)."""
    new = type(old)(period, old.misses)  # (state.py imports this module)
    new.started_at = old.started_at
    for node_id in node_ids:
        if old.alive(node_id, now):
            seen = old.last_seen.get(node_id, old.started_at)
            new.last_seen[node_id] = max(seen, now + old.period - new.grace)
        else:
            new.last_seen[node_id] = float("-inf")
    return new


IDEMPOTENT = frozenset({"cluster_update"})
"""Of these commands, those applying twice does what applying once does (the store may
resend them when their outcome is unknown)."""

HANDLERS = {
    **carotation.HANDLERS,  # ca_rotate_start, ca_rotate_ack (`cluster ca --rotate`)
    "cluster_update": op_cluster_update,
    "force_new_cluster": op_force_new_cluster,
}
