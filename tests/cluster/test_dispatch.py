"""The agent's report batching (meshkit.cluster.node.service_loops.compact): one update per
task, and applying the compacted batch ends in the same state as applying every report in turn."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshkit.cluster.model import state as cstate
from meshkit.cluster.model.services import TASK_STATES
from meshkit.cluster.node.service_loops import compact


def test_compact_keeps_one_update_per_task_in_first_seen_order() -> None:
    updates = [
        {"id": "a", "state": "starting"},
        {"id": "b", "state": "running", "pid": 7},
        {"id": "a", "state": "running", "pid": 5, "started_at": 1.0},
        {"id": "a", "state": "failed", "error": "exited with code 1: boom"},
    ]
    assert compact(updates) == [
        {"id": "a", "state": "failed", "pid": 5, "started_at": 1.0,
         "error": "exited with code 1: boom"},
        {"id": "b", "state": "running", "pid": 7},
    ]  # fmt: skip
    assert updates[0] == {"id": "a", "state": "starting"}  # the input is left alone


_FORWARD = [s for s in TASK_STATES if s not in ("new", "pending", "assigned")]


@given(st.lists(st.sampled_from(_FORWARD), min_size=1, max_size=8))
def test_compacted_reports_end_where_the_reports_do(states: list[str]) -> None:
    # an executor reports states in order; the manager may get them one by one or merged
    order = sorted(states, key=TASK_STATES.index)
    reports: list[dict[str, Any]] = [
        {"id": "t1", "state": s, "message": s, "pid": i} for i, s in enumerate(order)
    ]
    task = {"id": "t1", "state": "assigned", "message": "", "error": "", "exit_code": None,
            "pid": None, "healthy": None, "started_at": None, "updated_at": 0.0}  # fmt: skip
    one_by_one, merged = copy.deepcopy(task), copy.deepcopy(task)
    for r in reports:
        cstate._set_status(one_by_one, r, 1.0)
    for r in compact(reports):
        cstate._set_status(merged, r, 1.0)
    assert merged == one_by_one
