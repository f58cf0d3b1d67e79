"""The cluster-wide methods of the API (manager certificates only; open on the local socket):

    cluster_inspect {}                 -> Docker's `swarm inspect` shape (ID, CreatedAt, Spec with
                                          Dispatcher, Orchestration, CAConfig, EncryptionConfig,
                                          Overlay settings; pools, data path port, managers)
    cluster_update  {"settings": {heartbeat_period?, task_history_limit?, cert_lifetime?,
                     autolock?, encryption_key_rotation?}}
                                       -> {"changed": [setting], "unlock_key"? (autolock turned
                                          on: the new key, shown this once)}
    unlock_key      {"rotate"?}        -> {"unlock_key"}   (refused while autolock is off)
    node_ps         {"node"}           -> {"node", "tasks": [task view]}  (Docker's `node ps`)
    events          {"after"?, "since"?, "until"?, "types"?, "wait"?}
                                       -> {"events": [event], "last": seq}  (api/events.py;
                                          without events after `after`, waits up to `wait` s)

And on the local socket only, answered while the manager is locked (raft/autolock.py):

    unlock          {"key"}            -> {"unlocked": true}   wrong key: code "locked"

While a manager waits for its unlock key, `info` says ``"locked": true`` and every other method
on its socket answers code "locked" (dispatched in meshkit.cluster.api.nodes).
"""

from __future__ import annotations

from typing import Any

from meshkit.cluster.api.common import loaded_state, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.api.events import TYPES, EventLog
from meshkit.cluster.model import state as cstate
from meshkit.cluster.model.clusterops import check_settings
from meshkit.cluster.raft import autolock
from meshkit.cluster.raft.sealing import SealError
from meshkit.cluster.rpc.transport import Peer, RpcError

CLUSTER_METHODS = frozenset(
    {"cluster_inspect", "cluster_update", "unlock_key", "node_ps", "events"}
)


def cluster_view(st: cstate.ClusterState) -> dict[str, Any]:
    return {
        "ID": st.cluster_id,
        "CreatedAt": st.created_at,
        "Spec": {
            "Orchestration": {"TaskHistoryRetentionLimit": st.task_history_limit},
            "Dispatcher": {"HeartbeatPeriod": st.heartbeat_period},
            "CAConfig": {"NodeCertExpiry": st.cert_lifetime},
            "EncryptionConfig": {"AutoLockManagers": st.autolock},
            "Overlay": {"EncryptionKeyRotation": st.encryption_key_rotation},
        },
        "DefaultAddrPool": list(st.default_addr_pool),
        "SubnetSize": st.default_addr_pool_mask_length,
        "DataPathPort": st.data_path_port,
        "Managers": len(st.managers()),
        "Nodes": len(st.nodes),
    }


class ClusterMethods:
    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.events_log = EventLog()

    def _seal(self, value: str) -> str:
        try:
            return self.node.sealer.seal(value)
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None

    async def cluster_inspect(self, peer: Peer, params: dict[str, Any]) -> Any:
        return cluster_view(loaded_state(self.node))

    async def cluster_update(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        settings = dict(params.get("settings") or {})
        settings.pop("unlock_key", None)  # made here, never taken from a client
        try:
            check_settings(settings)
        except cstate.CommandError as exc:
            raise RpcError("bad_request", str(exc)) from None
        key = ""
        if settings.get("autolock") and not st.autolock:
            key = autolock.new_unlock_key()
            settings["unlock_key"] = self._seal(key)
        result = await self.node.submit({"op": "cluster_update", "settings": settings})
        out: dict[str, Any] = {"changed": result.get("changed", [])}
        if key:
            out["unlock_key"] = key
        return out

    async def unlock_key(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        if not st.autolock or not st.unlock_key:
            raise RpcError(
                "conflict",
                "no unlock key is set: autolock is off (turn it on with "
                "`meshkit cluster update --autolock=true`)",
            )
        if params.get("rotate"):
            key = autolock.new_unlock_key()
            await self.node.submit(
                {"op": "cluster_update", "settings": {"unlock_key": self._seal(key)}}
            )
            return {"unlock_key": key}
        try:
            return {"unlock_key": self.node.sealer.open(st.unlock_key)}
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None

    async def node_ps(self, peer: Peer, params: dict[str, Any]) -> Any:
        from meshkit.cluster.api.services import node_assignment, task_view
        from meshkit.cluster.model.services import task_spec

        st = loaded_state(self.node)
        ref = str_param(params, "node")
        if ref == "self":
            ref = self.node.node_id
        node = cstate.resolve_node(st, ref)
        tasks = []
        for t in node_assignment(st, node.id):
            svc = st.services.get(t.get("service_id", ""))
            tasks.append(task_view(st, t, task_spec(svc["spec"]) if svc else None))
        tasks.sort(key=lambda v: (v["Name"], -v["CreatedAt"]))
        return {"node": node.hostname, "tasks": tasks}

    async def events(self, peer: Peer, params: dict[str, Any]) -> Any:
        types = [str(t) for t in params.get("types") or []]
        bad = [t for t in types if t not in TYPES]
        if bad:
            raise RpcError("bad_request", f"unknown event type {bad[0]!r}: {', '.join(TYPES)}")
        after = int(params.get("after") or 0)
        since, until = params.get("since"), params.get("until")
        log = self.events_log
        found = log.after(after, since, until, types)
        wait = float(params.get("wait") or 0.0)
        if not found and wait > 0:
            await log.wait(after, wait)
            found = log.after(after, since, until, types)
        # events the filters left out still move the cursor on
        last = found[-1][0] if found else max(after, log.seq)
        return {"events": [ev for _, ev in found], "last": last}

    def unlock(self, params: dict[str, Any]) -> Any:
        gate = autolock.node_gate(self.node.data_dir)
        if not gate.locked:
            raise RpcError("conflict", "this manager is not locked")
        try:
            gate.unlock(str_param(params, "key"))
        except autolock.LockError as exc:
            raise RpcError("locked", str(exc)) from None
        return {"unlocked": True}
