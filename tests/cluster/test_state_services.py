"""The service and task commands of the replicated state."""

from __future__ import annotations

import copy

import pytest

from meshkit.cli import servicespec
from meshkit.cluster.model import services as sv
from meshkit.cluster.model import state as cs

M1 = "m" * 25
SID = "s" * 25


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id=M1, hostname="mgr", role="manager", addr="198.18.0.1").to_dict()
    cs.apply(st, {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node, "now": 1.0})
    spec = servicespec.build_spec({"name": "web", "command": ["srv"], "replicas": "2"})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    return st


def test_create_update_rollback_rm() -> None:
    st = _state()
    spec = st.services[SID]["spec"]
    with pytest.raises(cs.CommandError, match="service web already exists"):
        cs.apply(st, {"op": "service_create", "service": sv.new_service("t" * 25, spec, 3.0)})
    with pytest.raises(cs.CommandError, match="invalid service spec: command"):
        cs.apply(st, {"op": "service_update", "service_id": SID, "spec": {**spec, "command": []}})
    with pytest.raises(cs.CommandError, match="does not have a previous spec"):
        cs.apply(st, {"op": "service_update", "service_id": SID, "rollback": True})
    cs.apply(
        st, {"op": "service_update", "service_id": SID, "spec": {**spec, "replicas": 5}, "now": 4.0}
    )
    svc = st.services[SID]
    assert svc["version"] == 2 and svc["spec"]["replicas"] == 5
    assert svc["previous_spec"]["replicas"] == 2
    assert svc["update_status"]["state"] == "updating" and svc["update_status"]["started_at"] == 4.0
    cs.apply(st, {"op": "service_update", "service_id": SID, "rollback": True, "now": 5.0})
    assert svc["spec"]["replicas"] == 2 and svc["previous_spec"]["replicas"] == 5
    assert svc["version"] == 3 and svc["update_status"]["state"] == "rollback_started"
    with pytest.raises(cs.CommandError, match="mode cannot change"):
        cs.apply(
            st, {"op": "service_update", "service_id": SID, "spec": {**spec, "mode": "global"}}
        )
    task = sv.new_task("k" * 25, svc, 1, 6.0)
    cs.apply(st, {"op": "tasks_write", "create": [task], "now": 6.0})
    cs.apply(st, {"op": "service_rm", "service_id": SID, "now": 7.0})
    assert SID not in st.services and st.tasks["k" * 25]["desired_state"] == "remove"
    with pytest.raises(cs.CommandError, match="no such service"):
        cs.apply(st, {"op": "service_rm", "service_id": SID})
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()


def test_task_states_only_move_forward_and_writes_replay_safely() -> None:
    st = _state()
    svc = st.services[SID]
    tid = "k" * 25
    write = {
        "op": "tasks_write",
        "create": [sv.new_task(tid, svc, 1, 3.0)],
        "node": {tid: M1},
        "now": 3.0,
    }
    cs.apply(st, write)
    once = copy.deepcopy(st.tasks)
    cs.apply(st, write)  # replayed: nothing changes
    assert st.tasks == once and st.tasks[tid]["state"] == "assigned"
    report = {"op": "task_status", "now": 4.0}
    cs.apply(
        st,
        {
            **report,
            "updates": [
                {"id": tid, "state": "running", "pid": 7, "started_at": 4.0, "message": "started"}
            ],
        },
    )
    cs.apply(st, {**report, "updates": [{"id": tid, "state": "starting"}, {"id": "gone"}]})
    t = st.tasks[tid]
    assert t["state"] == "running" and t["pid"] == 7 and t["updated_at"] == 4.0
    cs.apply(
        st,
        {
            "op": "task_status",
            "now": 5.0,
            "updates": [{"id": tid, "state": "running", "healthy": True}],
        },
    )
    assert t["healthy"] is True and t["updated_at"] == 4.0  # same state: no state change
    long_error = "boom " * 500
    cs.apply(
        st,
        {
            "op": "task_status",
            "now": 6.0,
            "updates": [{"id": tid, "state": "failed", "error": long_error, "exit_code": 2}],
        },
    )
    cs.apply(st, {"op": "task_status", "now": 7.0, "updates": [{"id": tid, "state": "orphaned"}]})
    assert t["state"] == "failed" and t["error"] == long_error  # terminal is final, error whole
    cs.apply(st, {"op": "tasks_write", "desired": {tid: "remove"}, "now": 8.0})
    cs.apply(st, {"op": "tasks_write", "desired": {tid: "shutdown"}, "now": 8.0})
    assert t["desired_state"] == "remove"
    with pytest.raises(cs.CommandError, match="unknown state 'exploded'"):
        cs.apply(st, {"op": "task_status", "updates": [{"id": tid, "state": "exploded"}]})
    cs.apply(st, {"op": "tasks_write", "remove": [tid, tid], "now": 9.0})
    assert st.tasks == {}


def test_update_status_and_idempotent_ops() -> None:
    st = _state()
    status = {"state": "paused", "started_at": 1.0, "completed_at": None, "message": "m"}
    assert cs.apply(
        st, {"op": "service_update_status", "service_id": SID, "update_status": status}
    )["changed"]
    assert st.services[SID]["update_status"] == status
    assert not cs.apply(
        st, {"op": "service_update_status", "service_id": "x", "update_status": status}
    )["changed"]
    with pytest.raises(cs.CommandError, match="invalid update status"):
        cs.apply(
            st,
            {
                "op": "service_update_status",
                "service_id": SID,
                "update_status": {"state": "sleepy"},
            },
        )
    assert {"tasks_write", "task_status", "service_update_status"} <= cs.IDEMPOTENT
