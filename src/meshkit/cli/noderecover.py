"""`meshkit node init --force-new-cluster`, apart from node.py's everyday commands: checks that
the manager's own agent is stopped and its keys unlocked, then starts it as the only manager of
a cluster made from its state."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.agentrun import run_agent

__all__ = ["force_new_cluster"]


def force_new_cluster(
    data_dir: Path, host: str | None, web: str | None, detach: bool, log_level: str
) -> None:
    """`meshkit node init --force-new-cluster`: a single-manager cluster from this manager's
    data dir after quorum is lost for good (Docker's documented recovery)."""
    from meshkit.cli.node import _socket_for, _web_file, agent_call, read_unlock_key
    from meshkit.cluster.node import agent as ag
    from meshkit.cluster.node import bootstrap
    from meshkit.cluster.node.config import NodeConfig
    from meshkit.cluster.raft import autolock
    from meshkit.cluster.rpc.transport import RpcError

    cfg = NodeConfig.load(data_dir)
    if cfg.store:
        raise FlagError(
            "--force-new-cluster", "", f"this manager keeps the cluster's state in etcd "
            f"({cfg.store.get('url')}), not in its data dir: start it again with `meshkit node "
            "run`; losing etcd's quorum is recovered with etcd's own disaster recovery"
        )  # fmt: skip
    if host is not None or os.environ.get("MESHKIT_HOST"):
        cfg.socket = _socket_for(host)
    try:
        agent_call(cfg.socket, "info")
    except RpcError:
        pass
    else:
        raise MeshkitError(
            f"the agent of {data_dir} is running (socket {cfg.socket}): stop it first"
        )
    key = None
    if autolock.is_locked(data_dir / "raft"):  # autolock: the manager's keys need it now
        key = read_unlock_key()
        try:
            autolock.node_gate(data_dir).unlock(key)
        except autolock.LockError as exc:
            raise FlagError("unlock key", "", str(exc)) from None
    cfg, identity, first = bootstrap.force_new_cluster(data_dir, key)
    if host is not None or os.environ.get("MESHKIT_HOST"):
        cfg.socket = _socket_for(host)
    if web is not None:
        cfg.web = _web_file(web)

    def ready_text(agent: Any) -> str:
        return (
            f"Forced a new cluster: node {agent.node_id} is its only manager, with the "
            "cluster's state. Former managers are Down workers: remove them with "
            "`meshkit node rm`, then add managers with `meshkit node join-token manager`.\n"
        )

    def make(on_ready: Callable[[Any], None]) -> Any:
        return ag.Agent(data_dir, cfg, identity, init_cluster=first, on_ready=on_ready)

    run_agent(make, ready_text, data_dir, detach, log_level)
