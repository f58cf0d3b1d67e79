"""The orchestrator driven through whole scenarios: plan() + apply() + a simulated executor."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.cli import servicespec
from meshkit.cluster.model import services as sv
from meshkit.cluster.model import state as cs
from meshkit.cluster.model.orchestrator import plan

M1, W1, W2 = "m" * 25, "a" * 25, "b" * 25


class Sim:
    """A cluster state, a clock, deterministic ids and an executor that obeys at once."""

    def __init__(self, nodes: int = 3) -> None:
        self.st = cs.ClusterState()
        self.now = 1000.0
        self._ids = (f"{i:025d}" for i in itertools.count(1))
        self.broken: set[int] = set()  # spec versions whose tasks fail as they start
        cs.apply(
            self.st,
            {
                "op": "init",
                "cluster": {"cluster_id": "c" * 25},
                "node": _node(M1, "manager", "mgr"),
                "now": self.now,
            },
        )
        for nid, name in [(W1, "w1"), (W2, "w2")][: nodes - 1]:
            self.add_node(nid, name)

    def add_node(self, nid: str, hostname: str, **labels: str) -> None:
        node = _node(nid, "worker", hostname)
        node["labels"] = labels
        cs.apply(self.st, {"op": "add_node", "node": node, "now": self.now})

    def do(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return cs.apply(self.st, {"now": self.now, **cmd})

    def create(self, **flags: Any) -> str:
        spec = servicespec.build_spec({"command": ["srv"], **flags})
        sid = next(self._ids)
        self.do({"op": "service_create", "service": sv.new_service(sid, spec, self.now)})
        return sid

    def converge(self) -> float | None:
        """Plan and apply until the plan is empty; the executor runs what it is given."""
        for _ in range(30):
            p = plan(self.st, self.now, lambda: next(self._ids))
            if not p.commands:
                self.execute()
                p = plan(self.st, self.now, lambda: next(self._ids))
                if not p.commands:
                    return p.wake_at
            for cmd in p.commands:
                cs.apply(self.st, cmd)
        raise AssertionError("the orchestrator does not settle")

    def execute(self, run: bool = True) -> None:
        updates = []
        for t in self.st.tasks.values():
            if t["state"] in sv.TERMINAL or not t["node_id"]:
                continue
            if self.st.nodes[t["node_id"]].status != "ready":
                continue
            if t["desired_state"] != "running":
                updates.append({"id": t["id"], "state": "shutdown", "message": "shutdown"})
            elif run and t["spec_version"] in self.broken:
                updates.append(
                    {
                        "id": t["id"],
                        "state": "failed",
                        "error": "exit status 1",
                        "exit_code": 1,
                        "started_at": self.now,
                    }
                )
            elif run and t["state"] != "running":
                updates.append(
                    {
                        "id": t["id"],
                        "state": "running",
                        "message": "started",
                        "started_at": self.now,
                        "pid": 4242,
                    }
                )
        if updates:
            self.do({"op": "task_status", "updates": updates})

    def report(self, tid: str, state: str, **kw: Any) -> None:
        self.do({"op": "task_status", "updates": [{"id": tid, "state": state, **kw}]})

    def live(self, sid: str) -> list[dict[str, Any]]:
        return sorted(
            (
                t
                for t in self.st.tasks.values()
                if t["service_id"] == sid
                and t["desired_state"] == "running"
                and t["state"] not in sv.TERMINAL
            ),
            key=lambda t: (t["slot"], t["node_id"]),
        )

    def slots(self, sid: str) -> list[int]:
        return [t["slot"] for t in self.live(sid)]

    def tick(self, seconds: float) -> None:
        self.now += seconds


def _node(nid: str, role: str, hostname: str) -> dict[str, Any]:
    return cs.NodeRecord(id=nid, hostname=hostname, role=role, addr="198.18.0.1").to_dict()


def test_create_spreads_then_scale_up_and_down() -> None:
    sim = Sim()
    sid = sim.create(name="web", replicas="3")
    assert sim.converge() is None
    live = sim.live(sid)
    assert [t["slot"] for t in live] == [1, 2, 3]
    assert sorted(t["node_id"] for t in live) == sorted([M1, W1, W2])
    assert all(t["state"] == "running" for t in live)
    assert plan(sim.st, sim.now, lambda: "x").commands == []  # idempotent
    spec = dict(sim.st.services[sid]["spec"], replicas=5)
    sim.do({"op": "service_update", "service_id": sid, "spec": spec})
    assert sim.converge() == sim.now + 5  # the new tasks are watched for `monitor`
    assert sim.slots(sid) == [1, 2, 3, 4, 5]
    sim.tick(5)
    sim.converge()
    assert sim.st.services[sid]["update_status"]["state"] == "completed"
    spec = dict(spec, replicas=2)
    sim.do({"op": "service_update", "service_id": sid, "spec": spec})
    sim.converge()
    assert sim.slots(sid) == [1, 2]
    # removed slots leave no history behind
    assert sorted({t["slot"] for t in sim.st.tasks.values()}) == [1, 2]


def test_failure_restarts_after_delay_in_the_same_slot() -> None:
    sim = Sim(1)
    sid = sim.create(name="web", replicas="2", restart_delay="5s")
    sim.converge()
    t = sim.live(sid)[0]
    sim.report(t["id"], "failed", error="exit status 3: " + "x" * 200, exit_code=3)
    wake = sim.converge()
    assert wake == sim.now + 5 and sim.slots(sid) == [2]
    sim.tick(5)
    sim.converge()
    assert sim.slots(sid) == [1, 2]
    hist = [x for x in sim.st.tasks.values() if x["slot"] == 1]
    assert len(hist) == 2
    old = sim.st.tasks[t["id"]]
    assert old["desired_state"] == "shutdown" and old["error"].endswith("x" * 200)


def test_restart_conditions_and_max_attempts() -> None:
    sim = Sim(1)
    none = sim.create(name="none", restart_condition="none")
    onf = sim.create(name="onf", restart_condition="on-failure", restart_delay="0s")
    anyc = sim.create(name="any", restart_delay="0s", restart_max_attempts="2")
    sim.converge()
    for sid in (none, onf, anyc):
        sim.report(sim.live(sid)[0]["id"], "complete", exit_code=0)
    sim.converge()
    assert sim.live(none) == [] and sim.live(onf) == []
    assert sim.slots(anyc) == [1]  # "any" restarts a task that completed
    for _ in range(3):
        live = sim.live(anyc)
        if live:
            sim.report(live[0]["id"], "failed", exit_code=1)
        sim.tick(1)
        sim.converge()
    assert sim.live(anyc) == []  # two restarts, then no more
    # the dead slot keeps its place: no new task appears
    assert plan(sim.st, sim.now, lambda: "x").commands == []


def test_restart_window_forgets_old_restarts() -> None:
    sim = Sim(1)
    sid = sim.create(name="web", restart_delay="0s", restart_max_attempts="1", restart_window="10s")
    sim.converge()
    sim.report(sim.live(sid)[0]["id"], "failed")
    sim.converge()
    assert sim.slots(sid) == [1]
    sim.tick(20)
    sim.report(sim.live(sid)[0]["id"], "failed")
    sim.converge()
    assert sim.slots(sid) == [1]  # the first restart is outside the window
    sim.tick(1)
    sim.report(sim.live(sid)[0]["id"], "failed")
    sim.converge()
    assert sim.live(sid) == []


def test_node_down_drain_pause_and_removal() -> None:
    sim = Sim()
    sid = sim.create(name="web", replicas="3")
    gid = sim.create(name="g", mode="global")
    sim.converge()
    assert len(sim.live(gid)) == 3
    sim.do({"op": "set_status", "statuses": {W1: "down"}})
    sim.converge()
    assert W1 not in {t["node_id"] for t in sim.live(sid)} and sim.slots(sid) == [1, 2, 3]
    orphaned = [t for t in sim.st.tasks.values() if t["node_id"] == W1]
    assert orphaned and all(t["state"] == "orphaned" for t in orphaned)
    assert len(sim.live(gid)) == 2  # global: no replacement
    sim.do({"op": "set_status", "statuses": {W1: "ready"}})
    sim.converge()
    assert len(sim.live(gid)) == 3  # the node is back: it gets its global task
    sim.do({"op": "update_node", "node_id": W2, "availability": "drain"})
    sim.converge()
    assert W2 not in {t["node_id"] for t in sim.live(sid) + sim.live(gid)}
    assert sim.slots(sid) == [1, 2, 3]
    sim.do({"op": "update_node", "node_id": W1, "availability": "pause"})
    before = {t["id"] for t in sim.live(sid)}
    sim.converge()
    assert {t["id"] for t in sim.live(sid)} == before  # pause keeps its tasks
    on_w1 = [t for t in sim.live(sid) if t["node_id"] == W1]
    sim.report(on_w1[0]["id"], "failed")
    sim.tick(5)
    sim.converge()
    # no new tasks on a paused node: the replacement goes elsewhere
    assert len([t for t in sim.live(sid) if t["node_id"] == W1]) == len(on_w1) - 1
    assert sim.slots(sid) == [1, 2, 3]
    sim.do({"op": "set_status", "statuses": {W1: "down"}})
    sim.do({"op": "remove_node", "node_id": W1})
    sim.converge()
    assert not any(
        t["node_id"] == W1 and t["state"] not in sv.TERMINAL for t in sim.st.tasks.values()
    )


def test_constraints_and_rank() -> None:
    sim = Sim()
    sim.do({"op": "update_node", "node_id": W1, "label_add": {"zone": "a"}})
    sid = sim.create(name="web", replicas="4", constraint=["node.labels.zone==a"])
    not_w1 = sim.create(
        name="nw", replicas="2", constraint=[f"node.id!={W1}", "node.hostname!=mgr"]
    )
    workers = sim.create(name="wk", replicas="2", constraint=["node.role==worker"])
    sim.converge()
    assert {t["node_id"] for t in sim.live(sid)} == {W1}
    assert {t["node_id"] for t in sim.live(not_w1)} == {W2}
    assert {t["node_id"] for t in sim.live(workers)} == {W1, W2}
    nowhere = sim.create(name="nowhere", constraint=["node.labels.zone==b"])
    sim.converge()
    (pending,) = [t for t in sim.st.tasks.values() if t["service_id"] == nowhere]
    assert pending["state"] == "pending" and "no suitable node" in pending["error"]
    sim.do({"op": "update_node", "node_id": W2, "label_add": {"zone": "b"}})
    sim.converge()
    assert sim.st.tasks[pending["id"]]["node_id"] == W2
    # the label goes: the task moves off the node that no longer satisfies the constraint
    sim.do({"op": "update_node", "node_id": W1, "label_rm": ["zone"]})
    sim.converge()
    assert [t["node_id"] for t in sim.live(sid)] == [""] * 4  # pending: nowhere to go


def test_rank_prefers_fewest_tasks_and_avoids_failing_nodes() -> None:
    sim = Sim()
    busy = sim.create(name="busy", replicas="4", constraint=[f"node.id!={W2}"])
    sim.converge()
    sid = sim.create(name="web", replicas="1")
    sim.converge()
    assert sim.live(sid)[0]["node_id"] == W2  # fewest tasks overall
    assert len(sim.live(busy)) == 4
    flaky = Sim()
    fid = flaky.create(name="flaky", restart_delay="0s", constraint=[f"node.id!={M1}"])
    flaky.converge()
    nodes_used = []
    for _ in range(6):
        (t,) = flaky.live(fid)
        nodes_used.append(t["node_id"])
        flaky.report(t["id"], "failed")
        flaky.tick(1)
        flaky.converge()
    # ties go to the lower node id until it has 5 recent failures of the service: then last
    assert nodes_used[:5] == [W1] * 5 and nodes_used[5] == W2
    flaky.tick(400)  # the failures age out of the 5-minute window
    flaky.report(flaky.live(fid)[0]["id"], "failed")
    flaky.converge()
    assert flaky.live(fid)[0]["node_id"] == W1


def _update(sim: Sim, sid: str, **flags: Any) -> None:
    spec = servicespec.update_spec(sim.st.services[sid]["spec"], flags)
    sim.do({"op": "service_update", "service_id": sid, "spec": spec})


def test_rolling_update_stop_first_in_batches_with_delay() -> None:
    sim = Sim()
    sid = sim.create(
        name="web", replicas="4", update_parallelism="2", update_delay="10s", update_monitor="1s"
    )
    sim.converge()
    _update(sim, sid, env_add=["V=2"])
    p = plan(sim.st, sim.now, lambda: "x")
    (write,) = p.commands
    assert sorted(write["desired"].values()) == ["shutdown", "shutdown"] and "create" not in write
    sim.converge()
    versions = sorted(t["spec_version"] for t in sim.live(sid))
    assert versions == [1, 1, 2, 2]
    assert sim.converge() == sim.now + 10
    sim.tick(10)
    sim.converge()
    assert all(t["spec_version"] == 2 for t in sim.live(sid))
    assert sim.st.services[sid]["update_status"]["state"] == "updating"
    sim.tick(1)
    sim.converge()
    assert sim.st.services[sid]["update_status"]["state"] == "completed"
    assert sim.slots(sid) == [1, 2, 3, 4]


def test_rolling_update_start_first_keeps_old_until_new_runs() -> None:
    sim = Sim()
    sid = sim.create(name="web", replicas="2", update_order="start-first", update_monitor="0s")
    sim.converge()
    _update(sim, sid, env_add=["V=2"])
    for cmd in plan(sim.st, sim.now, lambda: "n" * 25).commands:
        sim.do(cmd)
    slot1 = [t for t in sim.st.tasks.values() if t["slot"] == 1 and t["desired_state"] == "running"]
    assert len(slot1) == 2  # the overlap: old and new both desired running
    sim.converge()
    assert all(t["spec_version"] == 2 for t in sim.live(sid)) and sim.slots(sid) == [1, 2]
    assert sim.st.services[sid]["update_status"]["state"] == "completed"


def test_failing_update_pauses_rolls_back_or_continues() -> None:
    for action, want in (
        ("pause", "paused"),
        ("rollback", "rollback_completed"),
        ("continue", "completed"),
    ):
        sim = Sim()
        sid = sim.create(
            name="web",
            replicas="3",
            update_failure_action=action,
            restart_condition="none",
            update_monitor="5s",
            rollback_monitor="0s",
        )
        sim.converge()
        sim.broken.add(2)
        _update(sim, sid, env_add=["V=2"])
        sim.converge()
        sim.tick(10)
        sim.converge()
        svc = sim.st.services[sid]
        assert svc["update_status"]["state"] == want, action
        versions = sorted(t["spec_version"] for t in sim.live(sid))
        if action == "pause":
            assert versions == [1, 1]  # one slot tried, failed, and the update stopped
            assert "update paused due to failure" in svc["update_status"]["message"]
        if action == "rollback":
            assert svc["spec"]["env"] == [] and svc["version"] == 3
            assert versions == [1, 1, 3]
        if action == "continue":
            assert versions == []  # every slot tried; none restarts (condition none)


def test_rollback_command_and_global_update() -> None:
    sim = Sim()
    gid = sim.create(name="g", mode="global", update_parallelism="0", update_monitor="0s")
    sim.converge()
    _update(sim, gid, env_add=["V=2"])
    sim.converge()
    assert [t["spec"]["env"] for t in sim.live(gid)] == [["V=2"]] * 3
    sim.do({"op": "service_update", "service_id": gid, "spec": {}, "rollback": True})
    assert sim.converge() == sim.now + 5  # the rollback's own monitor (5 s default)
    sim.tick(5)
    sim.converge()
    svc = sim.st.services[gid]
    assert svc["update_status"]["state"] == "rollback_completed"
    assert [t["spec"]["env"] for t in sim.live(gid)] == [[]] * 3
    assert svc["previous_spec"]["env"] == ["V=2"]


def test_history_pruned_to_five_per_slot_newest_kept() -> None:
    sim = Sim(1)
    sid = sim.create(name="web", restart_delay="0s")
    sim.converge()
    ids = []
    for _ in range(8):
        t = sim.live(sid)[0]
        ids.append(t["id"])
        sim.report(t["id"], "failed")
        sim.tick(1)
        sim.converge()
    slot = sorted((t for t in sim.st.tasks.values()), key=lambda t: t["created_at"])
    assert len(slot) == 5
    assert [t["id"] for t in slot[:4]] == ids[-4:]


def test_service_rm_removes_its_tasks() -> None:
    sim = Sim()
    sid = sim.create(name="web", replicas="3")
    sim.converge()
    sim.do({"op": "service_rm", "service_id": sid})
    assert all(t["desired_state"] == "remove" for t in sim.st.tasks.values())
    sim.converge()
    assert sim.st.tasks == {}


def test_health_check_start_first_waits_for_healthy() -> None:
    sim = Sim(1)
    sid = sim.create(name="web", health_cmd="true", update_order="start-first", update_monitor="0s")
    sim.converge()
    _update(sim, sid, env_add=["V=2"])
    sim.converge()
    new = [t for t in sim.live(sid) if t["spec_version"] == 2]
    assert len(sim.live(sid)) == 2 and new and new[0]["healthy"] is None
    sim.report(new[0]["id"], "running", healthy=True)
    sim.converge()
    assert [t["id"] for t in sim.live(sid)] == [new[0]["id"]]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "fail",
                "complete",
                "down",
                "up",
                "drain",
                "active",
                "pause",
                "scale",
                "update",
                "label",
                "unlabel",
                "tick",
                "rollback",
            ]
        ),
        st.integers(0, 5),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(EVENTS, st.sampled_from(["stop-first", "start-first"]))
def test_random_events_keep_invariants(events: list[tuple[str, int]], order: str) -> None:
    sim = Sim()
    sid = sim.create(
        name="web",
        replicas="3",
        restart_delay="2s",
        update_order=order,
        constraint=["node.labels.bad!=yes"],
        update_monitor="1s",
    )
    gid = sim.create(name="g", mode="global")
    sim.converge()
    nodes = [M1, W1, W2]
    for kind, n in events:
        node = nodes[n % 3]
        live = sim.live(sid)
        if kind in ("fail", "complete") and live:
            sim.report(live[n % len(live)]["id"], "failed" if kind == "fail" else "complete")
        elif kind in ("down", "up"):
            sim.do({"op": "set_status", "statuses": {node: "down" if kind == "down" else "ready"}})
        elif kind in ("drain", "active", "pause"):
            sim.do({"op": "update_node", "node_id": node, "availability": kind})
        elif kind == "scale":
            _update(sim, sid, replicas=str(n))
        elif kind == "update":
            _update(sim, sid, env_add=[f"V={n}"])
        elif kind == "label":
            sim.do({"op": "update_node", "node_id": node, "label_add": {"bad": "yes"}})
        elif kind == "unlabel":
            sim.do({"op": "update_node", "node_id": node, "label_add": {"bad": "no"}})
        elif kind == "rollback" and sim.st.services[sid]["previous_spec"]:
            sim.do({"op": "service_update", "service_id": sid, "spec": {}, "rollback": True})
        elif kind == "tick":
            sim.tick(3)
        sim.converge()
        _check_invariants(sim, sid, gid)
    assert plan(sim.st, sim.now, lambda: "z").commands == []


def _check_invariants(sim: Sim, sid: str, gid: str) -> None:
    svc = sim.st.services[sid]
    per_slot: dict[int, list[dict[str, Any]]] = {}
    for t in sim.st.tasks.values():
        if t["desired_state"] == "running" and t["state"] not in sv.TERMINAL and t["node_id"]:
            node = sim.st.nodes[t["node_id"]]
            assert node.status == "ready" and node.availability != "drain"
            assert t["service_id"] != sid or node.labels.get("bad") != "yes"
        if (
            t["service_id"] == sid
            and t["desired_state"] == "running"
            and t["state"] not in sv.TERMINAL
        ):
            per_slot.setdefault(t["slot"], []).append(t)
    assert len(per_slot) <= svc["spec"]["replicas"]
    for tasks in per_slot.values():
        # two only in a start-first overlap: an old version next to the new one
        assert len(tasks) <= 2
        if len(tasks) == 2:
            assert (
                svc["spec"]["update"]["order"] == "start-first"
                or svc["spec"]["rollback"]["order"] == "start-first"
            )
            assert len({t["spec_version"] for t in tasks}) == 2
    glob: dict[str, int] = {}
    for t in sim.live(gid):
        glob[t["node_id"]] = glob.get(t["node_id"], 0) + 1
    assert all(v == 1 for v in glob.values())
    slots: dict[tuple[str, Any], int] = {}
    for t in sim.st.tasks.values():
        key = (t["service_id"], t["slot"] or t["node_id"])
        slots[key] = slots.get(key, 0) + 1
    assert max(slots.values(), default=0) <= sv.HISTORY_PER_SLOT + 1
