"""What the API's areas (nodes, networks, services) share: ids, parameter access, the state a
manager answers from, and who a node method's caller is."""

from __future__ import annotations

import secrets
import string
from typing import Any

from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import state as cstate
from meshkit.cluster.rpc.transport import Peer, RpcError

_ID_ALPHABET = string.digits + string.ascii_lowercase


def new_node_id() -> str:
    """25 random base-36 characters, the shape of a swarm id (nodes, clusters, services,
    tasks and networks all use it)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(25))


def str_param(params: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise RpcError("bad_request", f"missing parameter {key!r}")
        return ""
    if not isinstance(value, str):
        raise RpcError("bad_request", f"parameter {key!r} must be a string")
    return value


def loaded_state(node: NodeContext) -> cstate.ClusterState:
    """The state a manager answers from; RpcError unavailable until its replica has it."""
    st = node.state
    if st is None or not st.initialized:
        raise RpcError("unavailable", "this manager has not loaded the cluster state yet")
    return st


def caller(node: NodeContext, peer: Peer, params: dict[str, Any]) -> cstate.NodeRecord:
    """The node a node method (heartbeat, tasks_watch, ...) is about, which must be the
    caller's own (the certificate's CN)."""
    node_id = str_param(params, "node_id")
    if peer.identity is not None and peer.identity.node_id != node_id:
        raise RpcError(
            "forbidden",
            f"node {peer.identity.node_id} cannot speak for node {node_id}",
        )
    record = loaded_state(node).nodes.get(node_id)
    if record is None:
        raise RpcError("not_found", f"node {node_id} is not part of this cluster (removed?)")
    return record
