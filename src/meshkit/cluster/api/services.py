"""The agent's RPC methods for services and tasks.

Managers (manager certificate on TCP, or the local Unix socket of a manager):

    service_create   {"spec"}                          -> {"id", "name"}
    service_ls       {"label"?}                        -> {"services": [service view]}
                     `label` keeps the services with that label: KEY or KEY=VALUE
    service_inspect  {"service"}                       -> the service record, with "tasks"
    service_ps       {"service"}                       -> {"service", "tasks": [task view]}
    service_update   {"service", "spec"}               -> {"id", "version"}
    service_scale    {"service", "replicas"}           -> {"id", "version"}
    service_rollback {"service"}                       -> {"id", "version"}
    service_rm       {"service"}                       -> {"id", "name"}
    service_logs     {"service", "tail"?, "since"?, "since_ns"?, "until_ns"?, "timestamps"?}
                     -> {"lines": [[task name, stream, text(, time ns)]], "since": {...},
                         "errors": [str]}   with times asked for, lines are in time order

Nodes (any node certificate of the cluster; the CN must be the node the call is about):

    tasks_watch  {"node_id", "version"?, "epoch"?, "wait"?} -> {"tasks": [task record],
                 "version", "epoch"}  a long poll: answers at once when the node's assignment
                 changed since (epoch, version), else when it changes or `wait` seconds pass
    task_report  {"node_id", "updates": [task_status update]} -> {}  forwarded to the leader

Served by every node, for managers only (the logs of the tasks it runs):

    task_logs    {"tasks": [task id], "tail"?, "since"?: {task id: offsets}, "since_ns"?,
                  "until_ns"?, "timestamps"?}   (the time filters run here, on the node)
                 -> {"logs": {task id: {"lines", "since"}}, "missing": [task id]}

`service` parameters take an id, a unique id prefix or a name, as Docker does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

from meshkit.cluster.api.common import caller, loaded_state, new_node_id
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.api.longpoll import KeyedSignal
from meshkit.cluster.model import state as cstate
from meshkit.cluster.model.services import task_name
from meshkit.cluster.rpc.transport import Peer, RpcError

SERVICE_METHODS = frozenset(
    {
        "service_create",
        "service_ls",
        "service_inspect",
        "service_ps",
        "service_update",
        "service_scale",
        "service_rollback",
        "service_rm",
        "service_logs",
    }
)
NODE_TASK_METHODS = frozenset({"tasks_watch", "task_report"})
NODE_SERVED_METHODS = frozenset({"task_logs"})

WATCH_WAIT = 20.0
"""Seconds a tasks_watch call is held open when nothing changes for the node."""

ACTIVE_STATES = ("new", "pending", "assigned", "accepted", "preparing", "starting", "running")


def find_service(st: cstate.ClusterState, ref: str) -> dict[str, Any]:
    """The service whose id, name or unique id prefix is `ref` (Docker's lookup order)."""
    services: dict[str, dict[str, Any]] = st.services  # type: ignore[attr-defined]
    if ref in services:
        return services[ref]
    for svc in services.values():
        if svc["spec"]["name"] == ref:
            return svc
    matches = [s for sid, s in services.items() if sid.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RpcError("conflict", f"service {ref!r} is ambiguous: {len(matches)} services match")
    raise RpcError("not_found", f"no such service: {ref}")


def tasks_of(st: cstate.ClusterState, service_id: str) -> list[dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = st.tasks  # type: ignore[attr-defined]
    return [t for t in tasks.values() if t["service_id"] == service_id]


def ports_text(ports: list[Mapping[str, Any]]) -> str:
    out = []
    for p in ports:
        if p.get("published"):
            out.append(f"*:{p['published']}->{p['target']}/{p.get('protocol', 'tcp')}")
        else:
            out.append(f"{p['target']}/{p.get('protocol', 'tcp')}")
    return ", ".join(out)


def service_view(st: cstate.ClusterState, svc: Mapping[str, Any]) -> dict[str, Any]:
    """One row of `service ls` (JSON form)."""
    spec = svc["spec"]
    tasks = tasks_of(st, svc["id"])
    running = sum(
        1 for t in tasks if t["state"] == "running" and t.get("desired_state") == "running"
    )
    if spec["mode"] == "global":
        nodes = {t.get("node_id") for t in tasks if t.get("desired_state") == "running"}
        desired = len(nodes)
        mode = "global"
    else:
        desired = int(spec.get("replicas", 1))
        mode = "replicated"
    return {
        "ID": svc["id"],
        "Name": spec["name"],
        "Mode": mode,
        "Replicas": f"{running}/{desired}",
        "Running": running,
        "Desired": desired,
        "Command": " ".join(spec["command"]),
        "Ports": ports_text(spec.get("ports") or []),
        "Version": svc.get("version", 0),
        "UpdateStatus": svc.get("update_status"),
        "Labels": dict(spec.get("labels") or {}),
    }


def task_view(
    st: cstate.ClusterState, task: Mapping[str, Any], current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One row of `service ps` (JSON form); the error is whole. `current` is the task spec of
    the service as it is now: a task with another spec is one a rolling update replaces."""
    # a global task waiting for room on its node (want_node) shows that node, as swarm's does
    node = st.nodes.get(task.get("node_id") or task.get("want_node") or "")
    spec = task.get("spec") or {}
    return {
        "ID": task["id"],
        "Name": task_name(task),
        "Slot": task.get("slot", 0),
        "Node": node.hostname if node is not None else (task.get("node_id") or ""),
        "NodeID": task.get("node_id") or "",
        "DesiredState": task.get("desired_state", ""),
        "State": task["state"],
        "Message": task.get("message", ""),
        "Error": task.get("error", "") or "",
        "ExitCode": task.get("exit_code"),
        "Healthy": task.get("healthy"),
        "Pid": task.get("pid"),
        "CreatedAt": task.get("created_at", 0.0),
        "UpdatedAt": task.get("updated_at", 0.0),
        "StartedAt": task.get("started_at"),
        "SpecVersion": task.get("spec_version", 0),
        "Current": current is not None and spec == current,
        "Ports": ports_text(spec.get("ports") or []),
        "Networks": [
            {"Name": a.get("name", ""), "ID": a.get("id", ""), "Addr": a.get("addr", "")}
            for a in task.get("networks") or []
        ],
    }


def node_assignment(st: cstate.ClusterState, node_id: str) -> list[dict[str, Any]]:
    return list(_tasks_by_node(st).get(node_id, ()))


# The tasks of every node, indexed once per placement change: a change that wakes thousands of
# nodes' tasks_watch would otherwise scan every task once per node, on the loop; and keyed on
# the state's index it was rebuilt for every join (each new node's first watch), O(tasks) each.
# Only tasks_write creates, assigns or removes tasks (ClusterState.placements counts those); the
# lists hold the task dicts themselves, so state reports show through without a rebuild.
_BY_NODE: tuple[tuple[int, int, int, int], dict[str, list[dict[str, Any]]]] = ((0, 0, -1, -1), {})


def _tasks_by_node(st: cstate.ClusterState) -> dict[str, list[dict[str, Any]]]:
    global _BY_NODE
    tasks: dict[str, dict[str, Any]] = st.tasks
    key = (id(st), id(tasks), st.placements, len(tasks))
    if _BY_NODE[0] != key:
        by_node: dict[str, list[dict[str, Any]]] = {}
        for t in tasks.values():
            if t.get("node_id"):
                by_node.setdefault(t["node_id"], []).append(t)
        _BY_NODE = (key, by_node)
    return _BY_NODE[1]


def touched_nodes(st: cstate.ClusterState, cmd: Mapping[str, Any]) -> set[str] | None:
    """Nodes whose assignment an applied command may have changed; None = maybe all."""
    op = cmd.get("op")
    tasks: dict[str, dict[str, Any]] = getattr(st, "tasks", {})
    if op == "tasks_write":
        nodes: set[str] = set()
        for t in cmd.get("create") or []:
            if t.get("node_id"):
                nodes.add(t["node_id"])
        nodes.update((cmd.get("node") or {}).values())
        for tid in list(cmd.get("desired") or {}) + list(cmd.get("remove") or []):
            t = tasks.get(tid)
            if t is None:
                return None  # removed before we looked: cannot tell whose it was
            if t.get("node_id"):
                nodes.add(t["node_id"])
        return nodes
    if op in ("service_rm", "remove_node", "leave", "init"):
        return None
    return set()


class ServiceMethods:
    """The service and task methods of one node's API."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.epoch = os.urandom(6).hex()  # versions below count from this process's start
        self._versions: dict[str, int] = {}
        self._all_version = 0
        self._changed = KeyedSignal()  # tasks_watch waiters, by node id

    # -- change notification (called by the agent for every applied command) -------------------

    def applied(self, cmd: Mapping[str, Any]) -> None:
        st = self.node.state
        if st is None:
            return
        nodes = touched_nodes(st, cmd)
        if nodes is None:
            self._all_version += 1
        elif not nodes:
            return
        else:
            for n in nodes:
                self._versions[n] = self._versions.get(n, 0) + 1
        self._changed.notify(nodes)  # only the watches of the nodes concerned wake

    def version_for(self, node_id: str) -> int:
        return self._versions.get(node_id, 0) + self._all_version

    # -- managers ------------------------------------------------------------------------------

    async def service_create(self, peer: Peer, params: dict[str, Any]) -> Any:
        from meshkit.cluster.model.services import check_spec, new_service

        spec = params.get("spec")
        if not isinstance(spec, dict):
            raise RpcError("bad_request", "missing parameter 'spec'")
        spec = check_spec(spec)
        st = loaded_state(self.node)
        self._check_networks(st, spec)
        now = time.time()
        record = new_service(new_node_id(), spec, now)
        cmd = {"op": "service_create", "service": record, "now": now}
        if params.get("request_id"):  # a retry with the same id cannot create twice
            cmd["request_id"] = str(params["request_id"])
        result = await self.node.submit(cmd)
        return {"id": result.get("service_id", record["id"]), "name": spec["name"]}

    def _check_networks(self, st: cstate.ClusterState, spec: Mapping[str, Any]) -> None:
        networks = getattr(st, "networks", {}) or {}
        for net in spec.get("networks") or []:
            if net not in networks and not any(
                n.get("name") == net for n in networks.values() if isinstance(n, dict)
            ):
                raise RpcError(
                    "not_found",
                    f"network {net} not found (make it with `meshkit network create -d overlay "
                    f"{net}`)",
                )

    async def service_ls(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        from meshkit.cluster.model.services import has_label

        services: dict[str, dict[str, Any]] = st.services  # type: ignore[attr-defined]
        label = params.get("label")
        views = [
            service_view(st, s)
            for s in services.values()
            if not label or has_label(s["spec"].get("labels") or {}, label)
        ]
        views.sort(key=lambda v: v["Name"])
        return {"services": views}

    async def service_inspect(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        svc = find_service(st, _ref(params))
        out = dict(svc)
        out["view"] = service_view(st, svc)
        networks = getattr(st, "networks", {}) or {}
        out["Endpoint"] = {
            "Mode": svc["spec"].get("endpoint_mode", "vip"),
            "VirtualIPs": [
                {
                    "NetworkID": net_id,
                    "Network": (networks.get(net_id) or {}).get("name", ""),
                    "Addr": ip,
                }
                for net_id, ip in sorted((svc.get("vips") or {}).items())
            ],
        }
        return out

    async def service_ps(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        from meshkit.cluster.model.services import task_spec

        svc = find_service(st, _ref(params))
        current = task_spec(svc["spec"])
        tasks = [task_view(st, t, current) for t in tasks_of(st, svc["id"])]
        return {"service": service_view(st, svc), "tasks": tasks}

    async def _update(self, svc: Mapping[str, Any], spec: dict[str, Any], rollback: bool) -> Any:
        from meshkit.cluster.model.services import check_spec

        if not rollback:
            spec = check_spec(spec)
            self._check_networks(loaded_state(self.node), spec)
        cmd: dict[str, Any] = {
            "op": "service_update",
            "service_id": svc["id"],
            "spec": spec,
            "rollback": rollback,
            "now": time.time(),
        }
        await self.node.submit(cmd)
        new = loaded_state(self.node).services.get(svc["id"], {})  # type: ignore[attr-defined]
        return {"id": svc["id"], "version": new.get("version", 0)}

    async def service_update(self, peer: Peer, params: dict[str, Any]) -> Any:
        svc = find_service(loaded_state(self.node), _ref(params))
        spec = params.get("spec")
        if not isinstance(spec, dict):
            raise RpcError("bad_request", "missing parameter 'spec'")
        return await self._update(svc, spec, rollback=False)

    async def service_scale(self, peer: Peer, params: dict[str, Any]) -> Any:
        svc = find_service(loaded_state(self.node), _ref(params))
        replicas = params.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise RpcError(
                "bad_request", f"invalid replicas value {replicas!r}: expected 0 or more"
            )
        spec = dict(svc["spec"])
        if spec["mode"] != "replicated":
            raise RpcError(
                "bad_request",
                f"scale can only be used with replicated mode: {spec['name']} is {spec['mode']}",
            )
        spec["replicas"] = replicas
        return await self._update(svc, spec, rollback=False)

    async def service_rollback(self, peer: Peer, params: dict[str, Any]) -> Any:
        svc = find_service(loaded_state(self.node), _ref(params))
        if not svc.get("previous_spec"):
            raise RpcError(
                "bad_request", f"service {svc['spec']['name']} does not have a previous spec"
            )
        return await self._update(svc, dict(svc["previous_spec"]), rollback=True)

    async def service_rm(self, peer: Peer, params: dict[str, Any]) -> Any:
        svc = find_service(loaded_state(self.node), _ref(params))
        await self.node.submit({"op": "service_rm", "service_id": svc["id"], "now": time.time()})
        return {"id": svc["id"], "name": svc["spec"]["name"]}

    async def service_logs(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        svc = find_service(st, _ref(params))
        tail = params.get("tail")
        since: dict[str, Any] = params.get("since") or {}
        times: dict[str, Any] = {
            k: params[k] for k in ("since_ns", "until_ns", "timestamps") if k in params
        }
        timed = any(v is not None and v is not False for v in times.values())
        by_node: dict[str, list[dict[str, Any]]] = {}
        for t in sorted(tasks_of(st, svc["id"]), key=lambda t: t.get("created_at", 0.0)):
            if t.get("node_id") and t["state"] not in ("new", "pending", "assigned"):
                by_node.setdefault(t["node_id"], []).append(t)
        lines: list[list[str]] = []
        new_since: dict[str, Any] = {}
        errors: list[str] = []

        async def one(node_id: str, tasks: list[dict[str, Any]]) -> None:
            node = st.nodes.get(node_id)
            if node is None:
                errors.append(f"node {node_id} is gone: logs of {len(tasks)} task(s) lost")
                return
            req: dict[str, Any] = {
                "tasks": [t["id"] for t in tasks],
                "tail": tail,
                "since": {t["id"]: since[t["id"]] for t in tasks if t["id"] in since},
                **times,
            }
            try:
                reply = await self.node.call_node(node, "task_logs", req)
            except RpcError as exc:
                errors.append(f"node {node.hostname} ({node.addr}): {exc.message}")
                for t in tasks:
                    if t["id"] in since:
                        new_since[t["id"]] = since[t["id"]]
                return
            for t in tasks:
                got = reply["logs"].get(t["id"])
                if got is None:
                    continue
                name = f"{task_name(t)}.{t['id'][:12]}@{node.hostname}"
                for stream, text, *when in got["lines"]:
                    lines.append([name, stream, text, *when])
                new_since[t["id"]] = got["since"]

        await asyncio.gather(*(one(n, ts) for n, ts in by_node.items()))
        if timed:
            lines.sort(key=lambda line: line[3] if len(line) > 3 else 0)
        return {"lines": lines, "since": new_since, "errors": errors}

    # -- nodes ---------------------------------------------------------------------------------

    async def tasks_watch(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        version = params.get("version")
        wait = min(float(params.get("wait") or WATCH_WAIT), 60.0)
        if params.get("epoch") == self.epoch and version == self.version_for(node.id):
            await self._changed.wait_until(
                node.id, lambda: self.version_for(node.id) != version, wait
            )
        st = loaded_state(self.node)
        return {
            "tasks": node_assignment(st, node.id),
            "version": self.version_for(node.id),
            "epoch": self.epoch,
        }

    async def task_report(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        updates = params.get("updates")
        if not isinstance(updates, list):
            raise RpcError("bad_request", "missing parameter 'updates'")
        st = loaded_state(self.node)
        tasks: dict[str, dict[str, Any]] = st.tasks  # type: ignore[attr-defined]
        # a node reports only on its own tasks
        mine = [
            u
            for u in updates
            if isinstance(u, dict) and tasks.get(str(u.get("id")), {}).get("node_id") == node.id
        ]
        if not mine:
            return {}
        await self.node.submit_task_status(mine)
        return {}

    # -- served by every node -----------------------------------------------------------------

    async def task_logs(self, peer: Peer, params: dict[str, Any]) -> Any:
        executor = self.node.executor
        if executor is None:
            raise RpcError("unavailable", "this node runs no task executor")
        ids = params.get("tasks") or []
        tail = params.get("tail")
        since = params.get("since") or {}
        since_ns, until_ns = params.get("since_ns"), params.get("until_ns")
        logs: dict[str, Any] = {}
        missing: list[str] = []
        for tid in ids:
            try:
                logs[tid] = executor.logs(
                    str(tid),
                    tail=None if tail is None else int(tail),
                    since=since.get(tid),
                    since_ns=None if since_ns is None else int(since_ns),
                    until_ns=None if until_ns is None else int(until_ns),
                    timestamps=bool(params.get("timestamps")),
                )
            except KeyError:
                missing.append(str(tid))
        return {"logs": logs, "missing": missing}


def _ref(params: dict[str, Any]) -> str:
    ref = params.get("service")
    if not isinstance(ref, str) or not ref:
        raise RpcError("bad_request", "missing parameter 'service'")
    return ref
