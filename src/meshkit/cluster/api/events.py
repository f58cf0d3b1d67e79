"""`meshkit events`: what changed in the cluster, derived from the commands the replica applies.

Every manager applies every committed command, so each one derives the same events from them
(sans-IO: `events_of(cmd, result, state)`), stamped with the time the proposing manager put in
the command. An `EventLog` keeps the last `KEEP` of them with a sequence number local to this
manager; `events` answers those after a sequence number (long-polling while there are none, for
`--follow`), filtered by time and type. A manager that restarts derives the events of the
commands its journal replays again (those since its last raft snapshot).

Event shape (Docker's `docker events --format json`):

    {"Type": "service"|"node"|"network"|"task"|"secret"|"config", "Action": "create"|"update"|
     "remove", "Actor": {"ID": id, "Attributes": {"name": ..., ...}}, "scope": "swarm",
     "time": seconds, "timeNano": nanoseconds}
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from meshkit.cluster.model import state as cstate
from meshkit.cluster.model.services import task_name

KEEP = 10_000
TYPES = ("service", "node", "network", "task", "secret", "config")

Event = dict[str, Any]


def _event(kind: str, action: str, actor: str, now: float, **attrs: Any) -> Event:
    return {
        "Type": kind,
        "Action": action,
        "Actor": {"ID": actor, "Attributes": {k: str(v) for k, v in attrs.items()}},
        "scope": "swarm",
        "time": int(now),
        "timeNano": int(now * 1e9),
    }


def _node_name(st: cstate.ClusterState, node_id: str) -> str:
    node = st.nodes.get(node_id)
    return node.hostname if node is not None else node_id


def _task(st: cstate.ClusterState, task_id: str, action: str, now: float, **attrs: Any) -> Event:
    task = st.tasks.get(task_id) or {}
    extra = {"name": task_name(task)} if task else {}
    if task.get("node_id"):
        extra["node.id"] = task["node_id"]
    if task.get("service_id"):
        extra["service.id"] = task["service_id"]
    return _event("task", action, task_id, now, **extra, **attrs)


def events_of(
    cmd: Mapping[str, Any], result: Mapping[str, Any], st: cstate.ClusterState
) -> list[Event]:
    """The events one applied command makes (none for a refused one)."""
    ok = result.get("ok")
    if not isinstance(ok, Mapping):
        return []
    op = str(cmd.get("op"))
    now = float(cmd.get("now") or 0.0)
    handler = _BY_OP.get(op)
    return [] if handler is None else list(handler(cmd, ok, st, now))


def _service(cmd: Mapping[str, Any], ok: Mapping[str, Any], st: Any, now: float) -> Iterable[Event]:
    op = cmd["op"]
    sid = str(ok.get("service_id") or cmd.get("service_id") or "")
    svc = st.services.get(sid)
    name = ok.get("name") or (svc["spec"]["name"] if svc else sid)
    if op == "service_create":
        if not ok.get("replayed"):
            yield _event("service", "create", sid, now, name=name)
    elif op == "service_rm":
        yield _event("service", "remove", sid, now, name=name)
    elif op == "service_update":
        yield _event("service", "update", sid, now, name=name)
    elif op == "service_update_status" and ok.get("changed") and svc:
        status = svc.get("update_status") or {}
        yield _event("service", "update", sid, now, name=name,
                     **{"updatestate.new": status.get("state", "")})  # fmt: skip


def _node(cmd: Mapping[str, Any], ok: Mapping[str, Any], st: Any, now: float) -> Iterable[Event]:
    op = cmd["op"]
    if op == "set_status":
        for node_id in ok.get("changed") or []:
            node = st.nodes.get(node_id)
            state = node.status if node is not None else ""
            yield _event("node", "update", node_id, now, name=_node_name(st, node_id),
                         **{"state.new": state})  # fmt: skip
        return
    node_id = str(ok.get("node_id") or "")
    if not node_id:
        return
    if op == "add_node":
        yield _event("node", "create", node_id, now, name=_node_name(st, node_id))
    elif op in ("remove_node", "leave"):
        yield _event("node", "remove", node_id, now, name=node_id)
    elif op == "set_role":
        if ok.get("changed"):
            yield _event("node", "update", node_id, now, name=_node_name(st, node_id),
                         **{"role.new": cmd.get("role", "")})  # fmt: skip
    else:
        attrs = {}
        if cmd.get("availability"):
            attrs["availability.new"] = cmd["availability"]
        yield _event("node", "update", node_id, now, name=_node_name(st, node_id), **attrs)


def _tasks(cmd: Mapping[str, Any], ok: Mapping[str, Any], st: Any, now: float) -> Iterable[Event]:
    if cmd["op"] == "task_status":
        for task_id in ok.get("changed") or []:
            task = st.tasks.get(task_id) or {}
            yield _task(st, task_id, "update", now, **{"state.new": task.get("state", "")})
        return
    for task_id in ok.get("created") or []:
        yield _task(st, task_id, "create", now)
    for task_id in cmd.get("remove") or []:
        if task_id not in st.tasks:
            yield _event("task", "remove", str(task_id), now)
    for update in cmd.get("status") or []:
        task = st.tasks.get(str(update.get("id", "")))
        if task is not None and task["state"] == update.get("state"):
            yield _task(st, task["id"], "update", now, **{"state.new": task["state"]})


def _named(kind: str) -> Any:
    """Networks, secrets and configs: their create and rm results name them."""

    def handler(
        cmd: Mapping[str, Any], ok: Mapping[str, Any], st: Any, now: float
    ) -> Iterable[Event]:
        what = str(cmd.get("kind") or kind)
        action = "create" if str(cmd["op"]).endswith("_create") else "remove"
        yield _event(what, action, str(ok.get("id", "")), now, name=ok.get("name", ""))

    return handler


_BY_OP = {
    **{op: _service for op in ("service_create", "service_update", "service_rm",
                               "service_update_status")},
    **{op: _node for op in ("add_node", "update_node", "set_role", "remove_node", "leave",
                            "set_status")},
    "tasks_write": _tasks,
    "task_status": _tasks,
    "network_create": _named("network"),
    "network_rm": _named("network"),
    "secret_create": _named("secret"),
    "secret_rm": _named("secret"),
}  # fmt: skip


class EventLog:
    """The last KEEP events of this manager, numbered, and a wait for new ones."""

    def __init__(self, keep: int = KEEP) -> None:
        self._events: deque[tuple[int, Event]] = deque(maxlen=keep)
        self.seq = 0
        self._new: asyncio.Event | None = None

    def record(self, cmd: Mapping[str, Any], result: Mapping[str, Any], st: Any) -> None:
        if st is None:
            return
        try:
            events = events_of(cmd, result, st)
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # an odd command must not stop the replica: it has no event
        for ev in events:
            self.seq += 1
            self._events.append((self.seq, ev))
        if events and self._new is not None:
            self._new.set()
            self._new = None

    def after(
        self,
        seq: int,
        since: float | None = None,
        until: float | None = None,
        types: Iterable[str] = (),
    ) -> list[tuple[int, Event]]:
        wanted = set(types)
        return [
            (n, ev)
            for n, ev in self._events
            if n > seq
            and (since is None or ev["timeNano"] >= since * 1e9)
            and (until is None or ev["timeNano"] <= until * 1e9)
            and (not wanted or ev["Type"] in wanted)
        ]

    async def wait(self, seq: int, timeout: float) -> None:
        """Until an event after `seq` is recorded, or `timeout` seconds."""
        if self.seq > seq:
            return
        if self._new is None:
            self._new = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout)
