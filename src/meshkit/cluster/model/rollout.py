"""A service's rolling update (and rollback) as one planning step: part of the orchestrator's
per-service planner (meshkit.cluster.model.orchestrator), with swarm's update_config
semantics: parallelism, delay, order (stop-first / start-first), monitor, max_failure_ratio
and failure_action (pause, continue, rollback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshkit.cluster.model import services as sv

Task = dict[str, Any]
SlotKey = int | str


def _failed_early(task: Task, state: str, monitor: float) -> bool:
    """A task of an update that ended before it ran for `monitor` seconds."""
    if state not in ("failed", "rejected", "complete"):
        return False
    started = task.get("started_at")
    return started is None or float(task["updated_at"]) - float(started) <= float(monitor)


class RollingUpdate:
    """The planner's update step; the attributes and the other methods are the planner's."""

    r: Any
    svc: dict[str, Any]
    spec: dict[str, Any]
    tasks: list[Task]

    def dirty(self, t: Task) -> bool:
        raise NotImplementedError

    def occupants(self, key: SlotKey) -> list[Task]:
        raise NotImplementedError

    def wanted_keys(self) -> list[SlotKey]:
        raise NotImplementedError

    def carried_restarts(self, key: SlotKey) -> list[float]:
        raise NotImplementedError

    def new_task(self, key: SlotKey, restarts: list[float]) -> None:
        raise NotImplementedError

    def _key(self, t: Task) -> SlotKey:
        raise NotImplementedError

    def rolling_update(self) -> None:
        r = self.r
        status = self.svc.get("update_status") or {}
        if status.get("state") not in ("updating", "rollback_started"):
            return
        rollback = status["state"] == "rollback_started"
        cfg = self.spec["rollback" if rollback else "update"]
        started = float(status.get("started_at") or 0.0)
        fresh = [t for t in self.tasks if not self.dirty(t) and t["created_at"] >= started]
        failures = [t for t in fresh if _failed_early(t, r.state_of(t), cfg["monitor"])]
        updated = {self._key(t) for t in fresh}
        if failures and len(failures) / max(len(updated), 1) > cfg["max_failure_ratio"]:
            action = cfg["failure_action"]
            if action == "rollback" and not rollback and self.svc.get("previous_spec"):
                r.other.append(
                    {
                        "op": "service_update",
                        "service_id": self.svc["id"],
                        "spec": self.svc["previous_spec"],
                        "rollback": True,
                        "now": r.now,
                    }
                )
                return
            if action != "continue":
                worst = failures[-1]
                self.set_update_status(
                    "rollback_paused" if rollback else "paused",
                    f"update paused due to failure or early termination of task {worst['id']}",
                    status,
                )
                return
        wanted = self.wanted_keys()
        in_flight = 0
        dirty_keys = []
        for key in wanted:
            occ = self.occupants(key)
            if not occ:
                in_flight += 1
                continue
            cur = occ[-1]
            if self.dirty(cur):
                dirty_keys.append(key)
            elif any(self.dirty(o) for o in occ[:-1]) or (
                not r.terminal(cur) and not sv.task_is_up(cur)
            ):
                in_flight += 1
        starts = [
            float(t.get("started_at") or t["updated_at"])
            for t in fresh
            if t.get("started_at") is not None or r.state_of(t) == "running"
        ]
        last = max(starts) if starts else None
        if in_flight:
            return
        if not dirty_keys:
            done_at = last + float(cfg["monitor"]) if last is not None else r.now
            if r.now < done_at:
                r.wake(done_at)
                return
            self.set_update_status(
                "rollback_completed" if rollback else "completed",
                "rollback completed" if rollback else "update completed",
                status,
                completed_at=r.now,
            )
            return
        if last is not None and r.now < last + float(cfg["delay"]):
            r.wake(last + float(cfg["delay"]))
            return
        size = int(cfg["parallelism"]) or len(dirty_keys)
        for key in dirty_keys[:size]:
            occ = self.occupants(key)
            # start-first overlaps a new task only with old ones placed on a node; an old task
            # still waiting for a node (all nodes down, say) is replaced, or each update would
            # pile up another
            placed = [t for t in occ if t["node_id"] and not r.terminal(t)]
            for t in occ:
                if cfg["order"] != "start-first" or t not in placed:
                    r.set_desired(t, "shutdown")
            if cfg["order"] == "start-first" and placed:
                self.new_task(key, self.carried_restarts(key))

    def set_update_status(
        self, state: str, message: str, old: Mapping[str, Any], completed_at: float | None = None
    ) -> None:
        self.r.other.append(
            {
                "op": "service_update_status",
                "service_id": self.svc["id"],
                "update_status": {
                    "state": state,
                    "started_at": old.get("started_at"),
                    "completed_at": completed_at,
                    "message": message,
                },
                "now": self.r.now,
            }
        )
