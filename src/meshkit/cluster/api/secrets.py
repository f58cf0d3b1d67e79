"""The agent's secret and config RPC methods: `meshkit secret ...`, `meshkit config ...`, and
the one a node uses to get the secrets of a task it is about to start.

Manager methods (a manager certificate, or the local socket of a manager):

    secret_create   {"name", "data" (base64), "labels"?}  -> {"id", "name"}
    secret_ls       {}                 -> {"secrets": [view]}      (never a value)
    secret_inspect  {"secret"}         -> view                      (never a value)
    secret_rm       {"secret"}         -> {"id", "name"}  refused while a service uses it
    config_create / config_ls / config_inspect {"config"} / config_rm   the same for configs;
                    config_inspect's view holds "Data" (base64): configs are not secret

Node method (any node certificate whose CN is the node asked about):

    task_secrets    {"node_id", "task_id"} -> {"secrets": [file], "configs": [file]}
                    file = {"name", "target", "uid", "gid", "mode", "data" (base64)}
                    only for a task assigned to the caller, not ended, and only what that
                    task's spec names: a node never gets a secret none of its tasks use

A secret's value is sealed before it is proposed to raft (AES-GCM under the cluster data key:
meshkit.cluster.raft.sealing), so only managers, which hold the key, can open it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Any

from meshkit.cluster.api.common import caller, loaded_state, new_node_id, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import secrets as secretrules
from meshkit.cluster.model import services as sv
from meshkit.cluster.rpc.transport import Peer, RpcError

log = logging.getLogger(__name__)

SECRET_METHODS = frozenset(
    f"{kind}_{verb}" for kind in secretrules.KINDS for verb in ("create", "ls", "inspect", "rm")
)
NODE_SECRET_METHODS = frozenset({"task_secrets"})


class SecretMethods:
    """The secret and config methods of one node's API."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        for kind in secretrules.KINDS:
            for verb in ("create", "ls", "inspect", "rm"):
                setattr(self, f"{kind}_{verb}", self._bind(kind, verb))

    def _bind(self, kind: str, verb: str) -> Any:
        method = getattr(self, "_" + verb)

        async def call(peer: Peer, params: dict[str, Any]) -> Any:
            return await method(kind, params)

        return call

    def _find(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        ref = str_param(params, kind)
        try:
            return secretrules.find(loaded_state(self.node), kind, ref)
        except secretrules.RefError as exc:
            raise RpcError("not_found", str(exc)) from None

    async def _create(self, kind: str, params: dict[str, Any]) -> Any:
        try:
            name = secretrules.check_name(params.get("name"))
            data = base64.b64decode(str_param(params, "data"), validate=True)
            secretrules.check_size(kind, len(data))
        except (binascii.Error, ValueError):
            raise RpcError("bad_request", f"{kind} data is not base64") from None
        except secretrules.RefError as exc:
            raise RpcError("bad_request", str(exc)) from None
        if secretrules.by_name(loaded_state(self.node), kind, name) is not None:
            raise RpcError("conflict", f"{kind} {name} already exists")
        record_id = new_node_id()
        if kind == "secret":  # the journal keeps the command: the value goes in sealed
            from meshkit.cluster.raft.sealing import SealError

            try:
                stored = self.node.sealer.seal_bytes(data, record_id)
            except SealError as exc:
                raise RpcError("unavailable", str(exc)) from None
        else:
            stored = base64.b64encode(data).decode("ascii")
        record = {
            "id": record_id,
            "name": name,
            "labels": dict(params.get("labels") or {}),
            "size": len(data),
            "data": stored,
        }
        return await self.node.submit(
            {"op": "secret_create", "kind": kind, "record": record, "now": time.time()}
        )

    async def _ls(self, kind: str, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        items = st.secrets if kind == "secret" else st.configs
        views = [secretrules.view(r, kind) for r in items.values()]
        views.sort(key=lambda v: v["Name"])
        return {kind + "s": views}

    async def _inspect(self, kind: str, params: dict[str, Any]) -> Any:
        return secretrules.view(self._find(kind, params), kind, with_data=True)

    async def _rm(self, kind: str, params: dict[str, Any]) -> Any:
        rec = self._find(kind, params)
        return await self.node.submit({"op": "secret_rm", "kind": kind, "id": rec["id"]})

    # -- nodes ---------------------------------------------------------------------------------

    async def task_secrets(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        task_id = str_param(params, "task_id")
        st = loaded_state(self.node)
        task = st.tasks.get(task_id)
        if task is None or task.get("node_id") != node.id:
            raise RpcError("forbidden", f"task {task_id} is not assigned to node {node.id}")
        if sv.is_terminal(task) or task.get("desired_state") != "running":
            raise RpcError("forbidden", f"task {task_id} is not to run: it gets no secrets")
        spec = task.get("spec") or {}
        out: dict[str, list[dict[str, Any]]] = {"secrets": [], "configs": []}
        for kind in secretrules.KINDS:
            for ref in spec.get(kind + "s") or []:
                rec = secretrules.by_name(st, kind, ref["source"])
                if rec is None:
                    raise RpcError("not_found", f"{kind} not found: {ref['source']}")
                if kind == "secret":
                    from meshkit.cluster.raft.sealing import SealError

                    try:
                        data = self.node.sealer.open_bytes(rec["data"], rec["id"])
                    except SealError as exc:
                        raise RpcError("unavailable", str(exc)) from None
                    text = base64.b64encode(data).decode("ascii")
                else:
                    text = rec["data"]
                out[kind + "s"].append(
                    {
                        "name": rec["name"],
                        "target": ref["target"],
                        "uid": ref["uid"],
                        "gid": ref["gid"],
                        "mode": ref["mode"],
                        "data": text,
                    }
                )
        log.info(
            "gave node %s the secrets of task %s: %s",
            node.id,
            task_id,
            ", ".join(f["name"] for f in out["secrets"]) or "none",
        )
        return out
