"""Leaving the cluster (`meshkit node leave`): a worker tells a manager; a manager commits its
own `leave` and waits (a little) until raft has let it go. The agent then stops and wipes the
data dir."""

from __future__ import annotations

import asyncio
import time

from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.node.roles import Roles
from meshkit.cluster.rpc.transport import RpcError


async def leave_cluster(
    node: NodeContext, roles: Roles, managers: ManagerClient, force: bool
) -> None:
    """Tell the cluster that this node leaves; RpcError when it cannot (and not `force`)."""
    if node.identity.role == "worker" or roles.store is None:
        try:
            await managers.ask("leave", {"node_id": node.node_id})
        except RpcError as exc:
            if not force:
                raise RpcError(
                    "unavailable",
                    f"cannot tell the managers that this node leaves: {exc.message}; "
                    "use --force to leave anyway",
                ) from None
        return
    st = node.state
    others = [] if st is None else [m for m in st.managers() if m.id != node.node_id]
    if not others and not force:
        raise RpcError(
            "conflict",
            "You are attempting to leave the swarm on a node that is participating "
            "as a manager. Removing the last manager erases all current state of the "
            "swarm. Use `--force` to ignore this message.",
        )
    if not others:
        return
    try:
        await roles.store.submit(
            {"op": "leave", "node_id": node.node_id, "force": force, "now": time.time()}
        )
    except MeshkitError as exc:
        if not force:
            raise RpcError("unavailable", f"cannot leave: {exc}") from None
    # Let the leader take this node out of raft (it hands over leadership first).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and roles.store is not None:
        if roles.store.is_leader:
            roles.store.reconcile_members({m.raft_addr for m in others})
        if roles.store.released:
            break
        await asyncio.sleep(0.1)
