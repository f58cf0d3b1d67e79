"""The cluster state's commands and the heartbeat liveness tracker (sans-IO)."""

from __future__ import annotations

import copy

import pytest

from meshkit.cluster.model import state as cs

M1 = "m" * 25
M2 = "n" * 25
W1 = "w" * 25


def _node(node_id: str, role: str = "worker", hostname: str = "", addr: str = "198.18.0.1"):
    return cs.NodeRecord(
        id=node_id, hostname=hostname or node_id[:3], role=role, addr=addr
    ).to_dict()


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    cs.apply(
        st,
        {
            "op": "init",
            "cluster": {"cluster_id": "c" * 25, "worker_secret": "w", "manager_secret": "m"},
            "node": _node(M1, "manager", "mgr1"),
            "now": 1.0,
        },
    )
    cs.apply(st, {"op": "add_node", "node": _node(W1, "worker", "wrk1"), "now": 2.0})
    return st


def test_init_once_and_only_with_a_manager() -> None:
    st = _state()
    assert st.initialized and st.cluster_id == "c" * 25
    assert [n.id for n in st.managers()] == [M1]
    with pytest.raises(cs.CommandError, match="already initialized"):
        cs.apply(st, {"op": "init", "cluster": {"cluster_id": "x"}, "node": _node(M2, "manager")})
    fresh = cs.ClusterState()
    with pytest.raises(cs.CommandError, match="first node of a cluster is a manager"):
        cs.apply(fresh, {"op": "init", "cluster": {"cluster_id": "x"}, "node": _node(W1)})
    with pytest.raises(cs.CommandError, match="not initialized"):
        cs.apply(fresh, {"op": "add_node", "node": _node(W1)})


def test_replicas_agree_and_refusals_change_nothing() -> None:
    a, b = _state(), _state()
    cmds = [
        {"op": "add_node", "node": _node(M2, "manager", "mgr2")},
        {"op": "update_node", "node_id": "wrk1", "availability": "drain", "label_add": {"z": "1"}},
        {"op": "set_role", "node_id": W1, "role": "manager"},
        {"op": "set_role", "node_id": M2, "role": "worker"},
        {"op": "rotate_token", "role": "worker", "secret": "w2"},
        {"op": "remove_node", "node_id": M2},  # Ready: refused
        {"op": "set_status", "statuses": {M2: "down"}},
        {"op": "remove_node", "node_id": M2},
    ]
    for cmd in cmds:
        results = []
        for st in (a, b):
            before = copy.deepcopy(st.to_dict())
            try:
                results.append(cs.apply(st, cmd))
            except cs.CommandError as exc:
                results.append(str(exc))
                assert st.to_dict() == before
        assert results[0] == results[1]
    assert a.to_dict() == b.to_dict()
    assert sorted(a.nodes) == [M1, W1]
    assert a.nodes[W1].role == "manager" and a.nodes[W1].availability == "drain"
    assert a.worker_secret == "w2"
    assert cs.ClusterState.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_last_manager_cannot_be_demoted_or_leave_without_force() -> None:
    st = _state()
    with pytest.raises(cs.CommandError, match="last manager"):
        cs.apply(st, {"op": "set_role", "node_id": M1, "role": "worker"})
    with pytest.raises(cs.CommandError, match="last manager"):
        cs.apply(st, {"op": "leave", "node_id": M1})
    cs.apply(st, {"op": "set_role", "node_id": W1, "role": "manager"})
    assert cs.apply(st, {"op": "set_role", "node_id": M1, "role": "worker"})["changed"]
    assert not cs.apply(st, {"op": "set_role", "node_id": M1, "role": "worker"})["changed"]


def test_rm_needs_force_when_ready_and_refuses_managers() -> None:
    st = _state()
    with pytest.raises(cs.CommandError, match="is not down and can't be removed"):
        cs.apply(st, {"op": "remove_node", "node_id": W1})
    with pytest.raises(cs.CommandError, match="demote it first"):
        cs.apply(st, {"op": "remove_node", "node_id": M1, "force": True})
    cs.apply(st, {"op": "remove_node", "node_id": W1, "force": True})
    assert W1 not in st.nodes


def test_update_labels_and_availability() -> None:
    st = _state()
    cs.apply(st, {"op": "update_node", "node_id": W1, "label_add": {"zone": "a", "ssd": ""}})
    cs.apply(st, {"op": "update_node", "node_id": W1, "label_rm": ["ssd"]})
    assert st.nodes[W1].labels == {"zone": "a"}
    with pytest.raises(cs.CommandError, match="key gpu doesn't exist"):
        cs.apply(st, {"op": "update_node", "node_id": W1, "label_rm": ["gpu"]})
    with pytest.raises(cs.CommandError, match="invalid availability 'off'"):
        cs.apply(st, {"op": "update_node", "node_id": W1, "availability": "off"})
    with pytest.raises(cs.CommandError, match="invalid label key"):
        cs.apply(st, {"op": "update_node", "node_id": W1, "label_add": {"-bad": "x"}})
    assert cs.parse_label("a.b/c=x=y") == ("a.b/c", "x=y")


def test_resolve_by_id_prefix_and_hostname() -> None:
    st = _state()
    assert cs.resolve_node(st, "wrk1").id == W1
    assert cs.resolve_node(st, "www").id == W1
    assert cs.resolve_node(st, M1).id == M1
    with pytest.raises(cs.NodeNotFound, match="node nope not found"):
        cs.resolve_node(st, "nope")
    cs.apply(st, {"op": "add_node", "node": _node("w" * 24 + "x", "worker", "wrk2")})
    with pytest.raises(cs.CommandError, match="ambiguous"):
        cs.resolve_node(st, "www")


def test_unknown_command_and_view() -> None:
    st = _state()
    with pytest.raises(cs.CommandError, match="unknown command"):
        cs.apply(st, {"op": "explode"})
    view = cs.node_view(st.nodes[M1], self_id=M1, manager_status="Leader")
    assert view["Self"] and view["Status"] == "Ready" and view["Availability"] == "Active"
    assert view["ManagerStatus"] == "Leader" and view["Hostname"] == "mgr1"


def test_liveness_down_after_three_missed_beats_and_ready_at_next() -> None:
    lv = cs.Liveness(period=5.0, misses=3)
    lv.start(100.0)
    statuses = {M1: "ready", W1: "ready"}
    # A fresh leader gives everyone a full grace period.
    assert lv.changes(statuses, 114.9) == {}
    lv.beat(M1, 110.0)
    assert lv.changes(statuses, 115.1) == {W1: "down"}
    statuses[W1] = "down"
    assert lv.next_deadline([M1, W1], 115.1) == 125.0
    assert lv.beat(W1, 116.0) is True  # was not alive: report at once
    assert lv.beat(W1, 117.0) is False
    assert lv.changes(statuses, 117.0) == {W1: "ready"}
    lv.mark_down(W1)
    assert not lv.alive(W1, 117.0)
    assert lv.changes({W1: "down"}, 117.0) == {}
    with pytest.raises(ValueError):
        cs.Liveness(period=0)


def test_liveness_node_changes_agree_with_changes() -> None:
    """The leader's scan over the node records gives what `changes` gives for their statuses."""
    from types import SimpleNamespace

    lv = cs.Liveness(period=5.0, misses=3)
    lv.start(100.0)
    lv.beat(M1, 110.0)
    for now, statuses in (
        (114.9, {M1: "ready", W1: "ready"}),
        (115.1, {M1: "ready", W1: "ready"}),
        (115.1, {M1: "down", W1: "down"}),
    ):
        nodes = {k: SimpleNamespace(status=v) for k, v in statuses.items()}
        assert lv.node_changes(nodes, now) == lv.changes(statuses, now)
    assert lv.node_changes({W1: SimpleNamespace(status="ready")}, 115.1) == {W1: "down"}
