"""A global service on nodes without room for its reservations: one pending task per such
node saying why (swarm's "insufficient resources on node"), placed once room frees up, gone
when its node leaves or stops being eligible. Pure: the orchestrator over a simulated state."""

from __future__ import annotations

from cluster.test_orchestrator import M1, W1, W2, Sim
from cluster.test_reservations import GIB, offer, tasks_of
from meshkit.cluster.api.services import task_view
from meshkit.cluster.model.orchestrator import plan


def _pending(sim: Sim, sid: str) -> list[dict]:
    return [t for t in tasks_of(sim, sid) if not t["node_id"] and t["desired_state"] == "running"]


def test_each_node_without_room_holds_a_pending_task_and_the_plan_settles() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    sid = sim.create(name="agent", mode="global", reserve_memory="6G")
    sim.converge()
    waiting = _pending(sim, sid)
    assert sorted(t["want_node"] for t in waiting) == sorted([M1, W1, W2])
    assert {t["error"] for t in waiting} == {"no suitable node (insufficient memory on 1 node)"}
    # a fixpoint: planning again writes nothing, and creates no second task per node
    assert plan(sim.st, sim.now, lambda: "x" * 25).commands == []
    # service ps shows the node each one waits for, by name, as swarm does
    views = {task_view(sim.st, t)["Node"] for t in waiting}
    assert views == {"mgr", "w1", "w2"}
    assert {t["want_node"] for t in waiting} == {
        task_view(sim.st, t)["Name"].split(".", 1)[1] for t in waiting
    }


def test_a_node_given_room_runs_its_waiting_task() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    sid = sim.create(name="agent", mode="global", reserve_cpu="3")
    sim.converge()
    (before,) = [t for t in _pending(sim, sid) if t["want_node"] == W2]
    assert before["error"] == "no suitable node (insufficient CPU on 1 node)"
    sim.do({"op": "set_resources", "node_id": W2,
            "resources": {"NanoCPUs": 4 * 10**9, "MemoryBytes": 4 * GIB}})  # fmt: skip
    sim.converge()
    after = sim.st.tasks[before["id"]]
    assert after["node_id"] == W2 and after["state"] == "running"  # the same task, placed
    assert sorted(t["want_node"] for t in _pending(sim, sid)) == sorted([M1, W1])


def test_a_waiting_task_goes_when_its_node_is_drained_or_removed() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    sid = sim.create(name="agent", mode="global", reserve_memory="6G")
    sim.converge()
    sim.do({"op": "update_node", "node_id": W1, "availability": "drain"})
    sim.converge()
    assert sorted(t["want_node"] for t in _pending(sim, sid)) == sorted([M1, W2])
    gone = [t for t in tasks_of(sim, sid) if t["want_node"] == W1]
    assert gone and all(t["state"] == "shutdown" for t in gone)
    sim.do({"op": "update_node", "node_id": W1, "availability": "active"})
    sim.converge()
    assert sorted(t["want_node"] for t in _pending(sim, sid)) == sorted([M1, W1, W2])


def test_an_update_replaces_waiting_tasks_without_piling_them_up() -> None:
    from cluster.test_orchestrator import _update

    for order in ("stop-first", "start-first"):
        sim = Sim()
        offer(sim, 2, 4 * GIB)
        flags = {"update_parallelism": "0", "update_monitor": "0s", "update_order": order}
        sid = sim.create(name="agent", mode="global", reserve_memory="6G", **flags)
        sim.converge()
        _update(sim, sid, env_add=["V=2"])
        sim.converge()
        waiting = _pending(sim, sid)
        assert sorted(t["want_node"] for t in waiting) == sorted([M1, W1, W2]), order
        assert all(t["spec"]["env"] == ["V=2"] for t in waiting), order
        old = [t for t in tasks_of(sim, sid) if t["spec"]["env"] == []]
        assert old and all(t["state"] == "shutdown" for t in old), order
