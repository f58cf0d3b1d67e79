"""The leader's orchestrator and scheduler: cluster state in, raft commands out (sans-IO).

`plan(state, now, new_id)` compares every service with its tasks and the nodes and returns
the commands that move the cluster towards what the services ask for: one `tasks_write` with
the round's task changes, plus `service_update_status` / `service_update` (rollback) commands
of rolling updates. The leader calls it after every applied change and again at `wake_at`.
Planning the state it produced again returns nothing (it is a fixpoint), and the same state,
clock and ids always give the same plan.

A slot (replicated: its number; global: the node id) is *occupied* while one of its tasks has
desired state running, whatever that task's state: a task that died and may not restart keeps
its slot, as in swarm. Per service, a round goes through:

1. nodes: tasks on a removed or Down node are orphaned; tasks on a drained node or one that no
   longer meets the constraints get desired shutdown (their slot frees and is refilled);
2. scale down: occupied slots beyond `replicas`, highest first, get desired remove;
3. restarts: a slot whose current task ended is restarted per the restart policy once `delay`
   has passed since it ended; the old task of a start-first pair shuts down once the new is up;
4. rolling update: batches of slots whose task runs an older spec;
5. fill: free slots (lowest first) or eligible nodes (global) get a new task; a slot whose old
   task is still stopping on a usable node waits for it (stop-first);
6. schedule: unassigned tasks go to the best eligible node; 7. prune history to 5 per slot.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshkit.cluster.model import services as sv
from meshkit.cluster.model import taskrt
from meshkit.cluster.model.rollout import RollingUpdate
from meshkit.cluster.model.state import DOWN, READY, ClusterState, NodeRecord

FAILURE_WINDOW = 300.0
"""Seconds in which FAILURE_LIMIT failures of a service on a node rank that node last."""
FAILURE_LIMIT = 5

Task = dict[str, Any]
SlotKey = int | str


@dataclass
class Plan:
    commands: list[dict[str, Any]]
    wake_at: float | None


@dataclass
class _Round:
    """The writes of one planning round and the task view they give."""

    now: float
    new_id: Callable[[], str]
    load: dict[str, int]
    # node id -> [nano CPUs, memory bytes] reserved by the tasks it holds (all services)
    reserved: dict[str, list[int]] = field(default_factory=dict)
    create: list[Task] = field(default_factory=list)
    desired: dict[str, str] = field(default_factory=dict)
    node: dict[str, str] = field(default_factory=dict)
    status: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)

    def desired_of(self, t: Task) -> str:
        return self.desired.get(t["id"]) or str(t["desired_state"])

    def state_of(self, t: Task) -> str:
        return self.states.get(t["id"]) or str(t["state"])

    def terminal(self, t: Task) -> bool:
        return self.state_of(t) in sv.TERMINAL

    def active(self, t: Task) -> bool:
        """Holds (or will hold) a process on its node."""
        return bool(t["node_id"]) and not self.terminal(t) and self.desired_of(t) == "running"

    def set_desired(self, t: Task, value: str) -> None:
        if sv.DESIRED_INDEX[value] <= sv.DESIRED_INDEX[self.desired_of(t)]:
            return
        if self.active(t):
            self.load[t["node_id"]] = self.load.get(t["node_id"], 1) - 1
        self.desired[t["id"]] = value

    def set_state(self, t: Task, state: str, message: str) -> None:
        if self.terminal(t):
            return
        if self.active(t):
            self.load[t["node_id"]] = self.load.get(t["node_id"], 1) - 1
        self.states[t["id"]] = state
        self.status.append({"id": t["id"], "state": state, "message": message})

    def wake(self, at: float) -> None:
        if at > self.now:
            self.wakes.append(at)

    def commands(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.create or self.desired or self.node or self.status or self.remove:
            write: dict[str, Any] = {"op": "tasks_write", "now": self.now}
            if self.create:
                write["create"] = self.create
            if self.desired:
                write["desired"] = self.desired
            if self.node:
                write["node"] = self.node
            if self.status:
                write["status"] = self.status
            if self.remove:
                write["remove"] = self.remove
            out.append(write)
        return out + self.other


def plan(state: ClusterState, now: float, new_id: Callable[[], str]) -> Plan:
    """The commands that move `state` towards its services' specs, and when to plan again."""
    load: dict[str, int] = {}
    reserved: dict[str, list[int]] = {}
    by_service: dict[str, list[Task]] = {}
    for t in state.tasks.values():
        by_service.setdefault(t["service_id"], []).append(t)
        if t["node_id"] and t["state"] not in sv.TERMINAL and t["desired_state"] == "running":
            load[t["node_id"]] = load.get(t["node_id"], 0) + 1
            cpu, mem = taskrt.reservation(t.get("spec") or {})
            if cpu or mem:
                held = reserved.setdefault(t["node_id"], [0, 0])
                held[0] += cpu
                held[1] += mem
    r = _Round(now=now, new_id=new_id, load=load, reserved=reserved)
    for service_id in sorted(by_service):
        if service_id not in state.services:
            _drop_removed(r, by_service[service_id], state.nodes)
    for service_id in sorted(state.services):
        _ServicePlanner(r, state, state.services[service_id], by_service.get(service_id, [])).run()
    return Plan(r.commands(), min(r.wakes) if r.wakes else None)


WRITE_CREATES = 200
"""New tasks per ``tasks_write``: a plan that fills thousands of nodes at once (a global service
created on a big cluster) becomes several raft entries, each applied in a few ms on every
manager, not one of megabytes that holds every replica's loop while it is applied."""


def split_writes(
    commands: list[dict[str, Any]], limit: int = WRITE_CREATES
) -> list[dict[str, Any]]:
    """The plan's commands with each ``tasks_write`` of more than `limit` new tasks cut into
    several: the first carries the rest of the write (desired states, reports, removals), each
    carries its new tasks and their node assignments. Applied in order they do what the one
    write does (a task is created before it is assigned; the other parts touch existing tasks)."""
    out: list[dict[str, Any]] = []
    for cmd in commands:
        create = cmd.get("create") or []
        if cmd.get("op") != "tasks_write" or len(create) <= limit:
            out.append(cmd)
            continue
        node = dict(cmd.get("node") or {})
        new_ids = {t["id"] for t in create}
        first = {k: v for k, v in cmd.items() if k not in ("create", "node")}
        rest_node = {tid: nid for tid, nid in node.items() if tid not in new_ids}
        if rest_node:
            first["node"] = rest_node
        if len(first) > 2:  # more than op and now
            out.append(first)
        for i in range(0, len(create), limit):
            part = create[i : i + limit]
            write: dict[str, Any] = {"op": "tasks_write", "now": cmd.get("now"), "create": part}
            assigned = {t["id"]: node[t["id"]] for t in part if t["id"] in node}
            if assigned:
                write["node"] = assigned
            out.append(write)
    return out


def _gone(node: NodeRecord | None) -> bool:
    return node is None or node.status == DOWN


def _drop_removed(r: _Round, tasks: list[Task], nodes: Mapping[str, NodeRecord]) -> None:
    """Tasks of a removed service leave the state once nothing runs them any more."""
    for t in tasks:
        if r.terminal(t) or not t["node_id"] or _gone(nodes.get(t["node_id"])):
            r.remove.append(t["id"])
        else:
            r.set_desired(t, "remove")


class _ServicePlanner(RollingUpdate):
    def __init__(
        self, r: _Round, state: ClusterState, svc: dict[str, Any], tasks: list[Task]
    ) -> None:
        self.r = r
        self.nodes = state.nodes
        self.history = int(getattr(state, "task_history_limit", sv.HISTORY_PER_SLOT))
        self.svc = svc
        self.spec = svc["spec"]
        self.is_global = self.spec["mode"] == "global"
        self.constraints = [sv.parse_constraint(c) for c in self.spec["constraints"]]
        self.tspec = sv.task_spec(self.spec)
        self.tasks = tasks
        self.groups: dict[SlotKey, list[Task]] = {}
        for t in sorted(tasks, key=lambda t: (t["created_at"], t["id"])):
            self.groups.setdefault(self._key(t), []).append(t)
        self.restarted: dict[SlotKey, list[float]] = {}

    # -- helpers --------------------------------------------------------------------------------

    def _key(self, t: Task) -> SlotKey:
        # a global task waiting for room on its node is keyed by that node (``want_node``)
        return str(t["node_id"] or t.get("want_node") or "") if self.is_global else int(t["slot"])

    def eligible(self, node: NodeRecord) -> bool:
        """May get new tasks of this service."""
        return (
            node.status == READY
            and node.availability == "active"
            and sv.node_matches(node, self.constraints)
        )

    def eligible_node(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and self.eligible(node)

    def keeps(self, node: NodeRecord | None) -> bool:
        """May keep running the tasks it has."""
        return (
            node is not None
            and node.status == READY
            and node.availability != "drain"
            and sv.node_matches(node, self.constraints)
        )

    def occupants(self, key: SlotKey) -> list[Task]:
        return [t for t in self.groups.get(key, []) if self.r.desired_of(t) == "running"]

    def dirty(self, t: Task) -> bool:
        return bool(t["spec"] != self.tspec)

    def carried_restarts(self, key: SlotKey) -> list[float]:
        group = self.groups.get(key, [])
        if key in self.restarted:
            return self.restarted[key]
        if group and not self.dirty(group[-1]):
            return list(group[-1].get("restarts") or [])
        return []

    # -- the round ------------------------------------------------------------------------------

    def run(self) -> None:
        self.check_nodes()
        self.scale_down()
        self.restarts()
        self.rolling_update()
        self.fill()
        self.schedule()
        self.prune()

    def check_nodes(self) -> None:
        r = self.r
        for t in self.tasks:
            if r.terminal(t):
                continue
            if not t["node_id"]:
                want = t.get("want_node")
                if want and not self.eligible_node(str(want)):
                    r.set_desired(t, "shutdown")  # its node left or may not take it any more
                if r.desired_of(t) != "running":
                    r.set_state(t, "shutdown", "shut down before it was assigned")
                continue
            node = self.nodes.get(t["node_id"])
            if node is None or node.status == DOWN:
                why = "node removed from the cluster" if node is None else "node is down"
                r.set_state(t, "orphaned", why)
                r.set_desired(t, "shutdown")
            elif r.desired_of(t) == "running" and not self.keeps(node):
                r.set_desired(t, "shutdown")

    def scale_down(self) -> None:
        if self.is_global:
            return
        occupied = sorted(k for k in self.groups if self.occupants(k))
        for key in occupied[int(self.spec["replicas"]) :]:
            for t in self.occupants(key):
                self.r.set_desired(t, "remove")

    def restarts(self) -> None:
        r = self.r
        policy = self.spec["restart"]
        for key in sorted(self.groups, key=str):
            occ = self.occupants(key)
            if not occ:
                continue
            cur = occ[-1]
            if not r.terminal(cur):
                if sv.task_is_up(cur) and r.state_of(cur) == "running":
                    for old in occ[:-1]:
                        r.set_desired(old, "shutdown")
                continue
            if not _may_restart(policy, cur):
                continue
            if self.is_global:
                node = self.nodes.get(str(key))
                if node is None or not self.eligible(node):
                    continue
            due = float(cur["updated_at"]) + float(policy["delay"])
            if r.now < due:
                r.wake(due)
                continue
            r.set_desired(cur, "shutdown")
            history = list(cur.get("restarts") or []) if not self.dirty(cur) else []
            limit = int(policy["max_attempts"])
            self.restarted[key] = [*history, r.now][-limit:] if limit else []

    def wanted_keys(self) -> list[SlotKey]:
        """The slots (replicated) or nodes (global) that should be occupied, in order."""
        if self.is_global:
            keys: list[SlotKey] = [
                n.id
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
                if self.eligible(n) or (self.keeps(n) and self.occupants(n.id))
            ]
            return keys
        replicas = int(self.spec["replicas"])
        occupied = sorted(k for k in self.groups if self.occupants(k))
        wanted: list[SlotKey] = list(occupied[:replicas])
        slot = 1
        while len(wanted) < replicas:
            if slot not in occupied:
                wanted.append(slot)
            slot += 1
        return sorted(wanted, key=int)

    def stopping_here(self, key: SlotKey) -> bool:
        """An old task of the slot still stops on a node the new one could use: wait for it."""
        for t in self.groups.get(key, []):
            stopping = not self.r.terminal(t) and self.r.desired_of(t) != "running"
            if stopping and t["node_id"] and self.keeps(self.nodes.get(t["node_id"])):
                return True
        return False

    def fill(self) -> None:
        for key in self.wanted_keys():
            if self.occupants(key):
                continue
            if self.is_global:
                node = self.nodes.get(str(key))
                if node is None or not self.eligible(node):
                    continue
            if self.stopping_here(key):
                continue
            self.new_task(key, self.carried_restarts(key))

    def new_task(self, key: SlotKey, restarts: list[float]) -> None:
        slot = 0 if self.is_global else int(key)
        task = sv.new_task(self.r.new_id(), self.svc, slot, self.r.now, restarts=restarts)
        self.r.create.append(task)
        self.groups.setdefault(key, []).append(task)
        self.tasks.append(task)
        if self.is_global:
            task["node_id"] = ""  # assigned by the write's "node" part
            task["want_node"] = str(key)
            short = _short_of(self.r, self.nodes.get(str(key)), taskrt.reservation(self.spec))
            if short:
                # as swarm: the node's task stays pending and says why, until room frees up
                task["error"] = _global_reason(short)
            else:
                self.assign_global(task)

    def assign_global(self, task: Task) -> None:
        key = str(task["want_node"])
        self.r.node[task["id"]] = key
        self.r.load[key] = self.r.load.get(key, 0) + 1
        cpu, mem = taskrt.reservation(self.spec)
        held = self.r.reserved.setdefault(key, [0, 0])
        held[0] += cpu
        held[1] += mem

    def schedule_global(self) -> None:
        """Global tasks waiting on their own node: placed there once it has room."""
        r = self.r
        need = taskrt.reservation(self.spec)
        for t in sorted(self.tasks, key=lambda t: (str(t.get("want_node")), t["created_at"])):
            if (
                t["node_id"]
                or not t.get("want_node")
                or t["id"] in r.node
                or r.terminal(t)
                or r.desired_of(t) != "running"
            ):
                continue
            short = _short_of(r, self.nodes.get(str(t["want_node"])), need)
            if not short:
                self.assign_global(t)
                continue
            reason = _global_reason(short)
            if t not in r.create and t["error"] != reason and r.state_of(t) == "pending":
                r.status.append({"id": t["id"], "state": "pending", "error": reason})

    def schedule(self) -> None:
        if self.is_global:
            self.schedule_global()
            return
        r = self.r
        pending = [
            t
            for t in self.tasks
            if not t["node_id"]
            and t["id"] not in r.node
            and not r.terminal(t)
            and r.desired_of(t) == "running"
        ]
        if not pending:
            return
        mine: dict[str, int] = {}
        failed: dict[str, int] = {}
        for t in self.tasks:
            if r.active(t):
                mine[t["node_id"]] = mine.get(t["node_id"], 0) + 1
            if (
                t["node_id"]
                and r.state_of(t) in ("failed", "rejected")
                and t["updated_at"] > r.now - FAILURE_WINDOW
            ):
                failed[t["node_id"]] = failed.get(t["node_id"], 0) + 1
        heap = [
            (failed.get(n.id, 0) >= FAILURE_LIMIT, mine.get(n.id, 0), r.load.get(n.id, 0), n.id)
            for n in self.nodes.values()
            if self.eligible(n)
        ]
        heapq.heapify(heap)
        need = taskrt.reservation(self.spec)
        for t in sorted(pending, key=lambda t: (t["slot"], t["created_at"], t["id"])):
            chosen = None
            skipped = []
            while heap:
                item = heapq.heappop(heap)
                if not _short_of(r, self.nodes.get(item[3]), need):
                    chosen = item
                    break
                skipped.append(item)  # no room for this task's reservations
            for item in skipped:
                heapq.heappush(heap, item)
            if chosen is None:
                reason = self.no_node_reason(need)
                if t in r.create:
                    t["error"] = t["error"] or reason
                elif t["error"] != reason and r.state_of(t) == "pending":
                    # the reason changed while it waits (a node left, another filled up)
                    r.status.append({"id": t["id"], "state": "pending", "error": reason})
                continue
            bad, count, load, node_id = chosen
            r.node[t["id"]] = node_id
            r.load[node_id] = load + 1
            if need != (0, 0):
                held = r.reserved.setdefault(node_id, [0, 0])
                held[0] += need[0]
                held[1] += need[1]
            heapq.heappush(heap, (bad, count + 1, load + 1, node_id))

    def no_node_reason(self, need: tuple[int, int] = (0, 0)) -> str:
        """Swarm's "no suitable node (...)" with the reasons counted."""
        down = sum(1 for n in self.nodes.values() if n.status != READY)
        inactive = sum(
            1 for n in self.nodes.values() if n.status == READY and n.availability != "active"
        )
        unmatched = sum(
            1
            for n in self.nodes.values()
            if n.status == READY
            and n.availability == "active"
            and not sv.node_matches(n, self.constraints)
        )
        short: dict[str, int] = {}
        for n in self.nodes.values():
            if self.eligible(n):
                what = _short_of(self.r, n, need)
                if what:
                    short[what] = short.get(what, 0) + 1
        parts = []
        if down:
            parts.append(f"{down} node{'s' if down > 1 else ''} down")
        if inactive:
            parts.append(
                f"{inactive} node{'s' if inactive > 1 else ''} not available for new tasks"
            )
        if unmatched:
            parts.append(
                f"{unmatched} node{'s' if unmatched > 1 else ''} not satisfying the "
                f"constraints {', '.join(self.spec['constraints'])}"
            )
        for what, count in sorted(short.items(), key=lambda kv: kv[0] != "memory"):
            parts.append(f"insufficient {what} on {count} node{'s' if count > 1 else ''}")
        return f"no suitable node ({'; '.join(parts) or 'no nodes'})"

    def prune(self) -> None:
        r = self.r
        for key, group in self.groups.items():
            gone_node = self.is_global and str(key) not in self.nodes
            kept = 0
            for t in reversed(group):
                desired = r.desired_of(t)
                ended = r.terminal(t) or _gone(self.nodes.get(t["node_id"]))
                if desired == "remove" and ended:
                    r.remove.append(t["id"])
                    continue
                if r.terminal(t) and desired != "running" and (kept >= self.history or gone_node):
                    r.remove.append(t["id"])
                    continue
                kept += 1


def _short_of(r: _Round, node: NodeRecord | None, need: tuple[int, int]) -> str:
    """What ``node`` lacks for reservations ``need``: "", "CPU" or "memory". A node that has
    not reported its resources yet is not filtered."""
    offered = node.resources if node is not None else {}
    if need == (0, 0) or node is None or not offered:
        return ""
    held = r.reserved.get(node.id, [0, 0])
    if need[1] and held[1] + need[1] > int(offered.get("MemoryBytes") or 0):
        return "memory"
    if need[0] and held[0] + need[0] > int(offered.get("NanoCPUs") or 0):
        return "CPU"
    return ""


def _global_reason(short: str) -> str:
    """A global task's pending reason: only its own node counts (swarm's words)."""
    return f"no suitable node (insufficient {short} on 1 node)"


def _may_restart(policy: Mapping[str, Any], task: Task) -> bool:
    """Whether the restart policy lets the ended `task` be replaced."""
    condition = policy["condition"]
    if condition == "none":
        return False
    if condition == "on-failure" and task["state"] == "complete":
        return False
    limit = int(policy["max_attempts"])
    if limit:
        ended = float(task["updated_at"])
        window = float(policy["window"])
        recent = [x for x in task.get("restarts") or [] if not window or x > ended - window]
        if len(recent) >= limit:
            return False
    return True
