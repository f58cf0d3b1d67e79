"""The leader's O(state) work at scale: the plan made in a forked child, big task writes cut
into raft entries of a bounded size, the network map's window for bulk commands only, and
joins retried with a request id that cannot make a second node."""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshkit.cluster.api import networks as netapi
from meshkit.cluster.api.nodes import join_key
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import state as cs
from meshkit.cluster.model.orchestrator import plan, split_writes
from meshkit.cluster.node import planfork
from meshkit.cluster.rpc.pki import new_node_key_and_csr

GLOBAL = {"name": "g", "mode": "global", "command": ["sleep", "1"]}


def _state(workers: int) -> cs.ClusterState:
    st = cs.ClusterState()
    manager = cs.NodeRecord(id="m" * 25, hostname="m1", role="manager", addr="127.0.0.1")
    cluster = {"cluster_id": "c" * 25, "default_addr_pool": ["198.19.0.0/16"]}
    cs.apply(st, {"op": "init", "cluster": cluster, "node": manager.to_dict(), "now": 1.0})
    for i in range(workers):
        node = cs.NodeRecord(id=f"{i:025d}", hostname=f"n{i}", role="worker", addr="127.0.0.1")
        cs.apply(st, {"op": "add_node", "node": node.to_dict(), "now": 2.0})
    return st


def _ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"t{next(counter):024d}"


# -- the plan in a forked child ----------------------------------------------------------------


def test_the_forked_plan_is_the_plan_made_on_the_loop() -> None:
    st = _state(30)
    cs.apply(st, {"op": "service_create", "service": {"id": "s" * 25, "spec": GLOBAL}, "now": 3})
    on_loop = plan(st, 10.0, _ids())
    forked = asyncio.run(planfork.plan_forked(st, 10.0, _ids()))
    assert forked.commands == on_loop.commands and forked.wake_at == on_loop.wake_at
    assert len(forked.commands[0]["create"]) == 31  # a task per node, the manager's too
    assert st.tasks == {}  # the child's work leaves the parent's state alone


def test_a_failing_plan_in_the_child_is_reported_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = _state(1)

    def broken(*_args: Any) -> Any:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(planfork, "plan", broken)
    with pytest.raises(planfork.PlanFailed, match="status"):
        asyncio.run(planfork.plan_forked(st, 1.0, _ids()))


# -- big task writes cut into bounded raft entries ---------------------------------------------


def test_a_big_tasks_write_is_cut_and_its_parts_do_what_the_whole_does() -> None:
    st = _state(450)
    cs.apply(st, {"op": "service_create", "service": {"id": "s" * 25, "spec": GLOBAL}, "now": 3})
    cmds = plan(st, 10.0, _ids()).commands
    assert len(cmds) == 1 and len(cmds[0]["create"]) == 451
    parts = split_writes(cmds, limit=200)
    assert [len(p["create"]) for p in parts] == [200, 200, 51]
    for p in parts:  # each new task's assignment travels with it
        assert set(p["node"]) == {t["id"] for t in p["create"]}
    whole = copy.deepcopy(st)
    for c in cmds:
        cs.apply(whole, c)
    for p in parts:
        cs.apply(st, p)
    assert st.tasks == whole.tasks
    assert all(t["state"] == "assigned" for t in st.tasks.values())


def test_the_rest_of_a_cut_write_goes_first() -> None:
    create = [{"id": f"n{i}"} for i in range(3)]
    cmd = {
        "op": "tasks_write",
        "now": 5.0,
        "create": create,
        "node": {"n0": "x", "old": "y"},
        "desired": {"gone": "shutdown"},
    }
    parts = split_writes([cmd, {"op": "service_update_status"}], limit=2)
    assert parts[0] == {"op": "tasks_write", "now": 5.0, "desired": {"gone": "shutdown"},
                        "node": {"old": "y"}}  # fmt: skip
    assert parts[1] == {"op": "tasks_write", "now": 5.0, "create": create[:2], "node": {"n0": "x"}}
    assert parts[2] == {"op": "tasks_write", "now": 5.0, "create": create[2:]}
    assert parts[3] == {"op": "service_update_status"}
    small = {"op": "tasks_write", "now": 1.0, "create": create}
    assert split_writes([small], limit=3) == [small]


# -- joins with a request id -------------------------------------------------------------------


def _join(st: cs.ClusterState, node_id: str, request: str, role: str = "worker") -> Any:
    node = cs.NodeRecord(id=node_id, hostname="w", role=role, addr="127.0.0.1")
    cmd = {"op": "add_node", "node": node.to_dict(), "now": 5.0, "request_id": request}
    return cs.apply(st, cmd)


def test_a_retried_join_gets_the_node_the_first_made() -> None:
    st = _state(0)
    assert _join(st, "a" * 25, "k1") == {"node_id": "a" * 25}
    assert _join(st, "b" * 25, "k1") == {"node_id": "a" * 25, "replayed": True}
    assert "b" * 25 not in st.nodes and len(st.nodes) == 2
    assert _join(st, "c" * 25, "k2") == {"node_id": "c" * 25}  # another join: another node
    with pytest.raises(cs.CommandError, match="made a worker"):
        _join(st, "d" * 25, "k1", role="manager")
    # the node gone, its request id names nothing any more
    cs.apply(st, {"op": "remove_node", "node_id": "a" * 25, "force": True, "now": 6.0})
    assert "k1" not in st.join_requests
    assert _join(st, "e" * 25, "k1") == {"node_id": "e" * 25}
    # kept in the snapshot format
    assert cs.ClusterState.from_dict(st.to_dict()).join_requests == st.join_requests


def test_the_join_key_binds_the_request_id_to_the_csr_key() -> None:
    _key, csr = new_node_key_and_csr("a")
    _key2, csr2 = new_node_key_and_csr("a")
    assert join_key("r1", csr) == join_key("r1", csr)
    assert join_key("r1", csr) != join_key("r1", csr2)  # another node's key
    assert join_key("r1", csr) != join_key("r2", csr)


# -- the network map's window ------------------------------------------------------------------


class _Node:
    def __init__(self, state: cs.ClusterState) -> None:
        self.state = state


def _runner(kind: str) -> asyncio.Runner:
    if kind == "uvloop":  # the agents' loop: its call_later(0) is a call_soon, with no when()
        uvloop = pytest.importorskip("uvloop")
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bulk_commands_share_a_map_build_and_others_are_built_at_once(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    monkeypatch.setattr(netapi, "MAP_COALESCE", 0.3)

    async def main() -> None:
        st = _state(2)
        methods = netapi.NetworkMethods(_Node(st))  # type: ignore[arg-type]

        def join(i: int) -> None:
            node = cs.NodeRecord(id=f"x{i:024d}", hostname=f"x{i}", role="worker", addr="1.2")
            cmd = {"op": "add_node", "node": node.to_dict(), "now": 3.0}
            cs.apply(st, cmd)
            methods.applied(cmd)

        join(0)  # nothing built lately: at the next loop turn
        await asyncio.sleep(0.05)
        assert methods.version == 1
        join(1)  # within the window of that build: waits for its end
        await asyncio.sleep(0.05)
        assert methods.version == 1
        req = netstate.check_request({"id": "n" * 25, "name": "app"})
        net = {"op": "network_create", "network": req, "now": 4.0}
        cs.apply(st, net)
        methods.applied(net)  # a network: built at the next loop turn, with the join
        await asyncio.sleep(0.05)
        assert methods.version == 2
        assert "x" + "1".zfill(24) in methods._map["nodes"]  # type: ignore[index]
        join(2)
        began = time.monotonic()
        while methods.version == 2:
            await asyncio.sleep(0.01)
        assert time.monotonic() - began >= 0.15  # it waited for the window

    with _runner(loop) as runner:
        runner.run(main())


def test_map_builds_stay_off_the_apply_path() -> None:
    # the build runs from the loop, never inside `applied` (which raft calls per command)
    st = _state(1)
    methods = netapi.NetworkMethods(_Node(st))  # type: ignore[arg-type]

    async def main() -> None:
        node = cs.NodeRecord(id="z" * 25, hostname="z", role="worker", addr="1.2")
        cmd = {"op": "add_node", "node": node.to_dict(), "now": 3.0}
        cs.apply(st, cmd)
        methods.applied(cmd)
        assert methods.version == 0
        await asyncio.sleep(0.02)
        assert methods.version == 1

    asyncio.run(main())


# -- a slow leader is not taken for a dead one ------------------------------------------------


def test_the_election_timeout_grows_while_the_leader_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from meshkit.cluster.raft import lib

    monkeypatch.setattr(lib, "_on_message", lambda *_args: None)  # pysyncobj's own handling
    conf = SimpleNamespace(raftMinTimeout=0.4, raftMaxTimeout=0.4, appendEntriesPeriod=0.1)
    follower = SimpleNamespace(_SyncObj__conf=conf)
    clock = [100.0]
    monkeypatch.setattr(lib.time, "monotonic", lambda: clock[0])

    def append(after: float) -> None:
        clock[0] += after
        lib._on_message_timed(follower, None, {"type": "append_entries", "term": 1})

    for _ in range(5):  # a prompt leader: appends every 0.1 s
        append(0.1)
    assert lib._patient_timeout(follower) == pytest.approx(0.4)
    append(0.9)  # held up for 0.9 s
    assert lib._patient_timeout(follower) == pytest.approx(0.4 + 1.8)
    append(5.0)  # longer still: capped
    assert lib._patient_timeout(follower) == pytest.approx(0.4 + lib.SLOW_LEADER_CAP)
    for _ in range(5):
        append(0.1)
    clock[0] += lib.SLOW_LEADER_MEMORY + 1  # a minute of promptness later: as before
    assert lib._patient_timeout(follower) == pytest.approx(0.4)
    lib._on_message_timed(follower, None, {"type": "request_vote", "term": 2})  # not an append
    assert lib._patient_timeout(follower) == pytest.approx(0.4)


# -- a join sent again on a real manager -------------------------------------------------------


def test_a_join_sent_again_with_its_request_id_makes_one_node() -> None:
    from meshkit.cluster.rpc.pki import client_ssl_context
    from meshkit.cluster.rpc.transport import RpcClient
    from support.agents import Cluster, token

    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        wt = token(m1, "worker")
        _key, csr = new_node_key_and_csr("pending")
        _key2, csr2 = new_node_key_and_csr("pending")

        async def join(csr_pem: bytes, request_id: str) -> Any:
            anon = await RpcClient.connect_tcp(m1.ip, 2377, client_ssl_context(None, None), 10.0)
            try:
                params = {"token": wt, "csr": csr_pem.decode(), "hostname": "w1",
                          "advertise_addr": "127.0.0.9", "request_id": request_id}  # fmt: skip
                return await anon.call("join", params, timeout=30)
            finally:
                await anon.close()

        async def calls() -> tuple[Any, Any, Any]:
            first = await join(csr, "r" * 32)
            again = await join(csr, "r" * 32)  # as after an unknown outcome
            other = await join(csr2, "r" * 32)  # the same id with another key: another node
            return first, again, other

        first, again, other = asyncio.run(calls())
        assert again["node_id"] == first["node_id"] and again["role"] == "worker"
        assert other["node_id"] != first["node_id"]
        ids = [n["ID"] for n in m1.ls()]
        assert len(ids) == 3 and first["node_id"] in ids and other["node_id"] in ids
    finally:
        c.close()


def test_the_planning_child_runs_at_a_lower_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshkit.cluster.model.orchestrator import Plan

    def spy(state: cs.ClusterState, now: float, new_id: Callable[[], str]) -> Plan:
        return Plan([], float(os.nice(0)))  # the child's niceness comes back as wake_at

    monkeypatch.setattr(planfork, "plan", spy)
    base = os.nice(0)
    p = asyncio.run(planfork.plan_forked(_state(1), 1.0, _ids()))
    assert p.wake_at == min(19, base + planfork.CHILD_NICE)
    assert os.nice(0) == base  # the agent's own priority is untouched
