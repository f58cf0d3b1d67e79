"""Which tasks to start, stop and forget: the executor's reconciliation, sans-IO.

The agent hands the executor the complete list of task records assigned to this node;
``plan_sync`` compares it with the tasks known here and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.cluster.model.services import TERMINAL

TERMINAL_STATES = TERMINAL  # swarm's end states, as the cluster state defines them
STOP_DESIRED = frozenset({"shutdown", "remove"})


@dataclass(frozen=True)
class SyncPlan:
    """What ``sync`` must do: records to start, ids to stop, ids to stop (if needed) and forget."""

    start: list[dict[str, Any]]
    stop: list[str]
    forget: list[str]


def plan_sync(active: Mapping[str, bool], tasks: Iterable[Mapping[str, Any]]) -> SyncPlan:
    """Decide from the tasks known here (id -> still active, i.e. not ended) and the complete
    list assigned to this node. Unknown tasks desired running and not already terminal start;
    known active ones desired shutdown/remove stop; known ones missing from the list go."""
    listed: dict[str, Mapping[str, Any]] = {}
    for task in tasks:
        listed[str(task["id"])] = task
    start: list[dict[str, Any]] = []
    stop: list[str] = []
    for task_id, task in listed.items():
        desired = task.get("desired_state")
        if task_id not in active:
            if desired == "running" and task.get("state") not in TERMINAL_STATES:
                start.append(dict(task))
        elif desired in STOP_DESIRED and active[task_id]:
            stop.append(task_id)
    forget = [task_id for task_id in active if task_id not in listed]
    return SyncPlan(start, stop, forget)
