"""O(state) work kept off the event loop: raft dumps from a forked child, the loop-stall probe,
gateway subnets carved by bisection, the network map built once per burst of commands."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import os
import pickle
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshkit.cluster.api import networks as netapi
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft import store as raftstore
from meshkit.cluster.raft.store import RaftStore, RaftTimings, StallLog
from meshkit.net import ipam

TIMINGS = RaftTimings(
    tick=0.01, election_min=0.3, election_max=0.8, append_period=0.05, retry=0.3, compact_entries=4
)
SECRET = "test-raft-secret"


def _addr(last: int) -> str:
    host = f"127.0.0.{last}"
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


async def _until(what: Callable[[], bool], timeout: float = 15.0, msg: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {msg or what}")
        await asyncio.sleep(0.02)


def _state_with_nodes(count: int) -> cs.ClusterState:
    st = cs.ClusterState()
    manager = cs.NodeRecord(id="a" * 25, hostname="m1", role="manager", addr="127.0.0.1")
    cluster = {"cluster_id": "c" * 25, "default_addr_pool": ["198.19.0.0/16"]}
    cs.apply(st, {"op": "init", "cluster": cluster, "node": manager.to_dict(), "now": 1.0})
    for i in range(count):
        node = cs.NodeRecord(id=f"{i:025d}", hostname=f"n{i}", role="worker", addr="127.0.0.1")
        cs.apply(st, {"op": "add_node", "node": node.to_dict(), "now": 2.0})
    return st


def test_snapshot_is_a_view_turned_into_the_dump_dict_only_when_pickled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = raftstore._StateMachine()
    machine.state = _state_with_nodes(3)
    expected = machine.state.to_dict()
    calls: list[int] = []
    real = cs.ClusterState.dump_dict

    def counting(self: cs.ClusterState) -> dict[str, Any]:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(cs.ClusterState, "dump_dict", counting)
    snap = machine._serialize()
    assert calls == []  # nothing O(state) on the loop: raft's tick only takes the view
    loaded = pickle.loads(pickle.dumps(snap))
    assert calls == [1]
    assert type(loaded) is dict and loaded == expected
    other = raftstore._StateMachine()
    other._deserialize(loaded)  # the dump format replicas load, as before
    assert other.state.to_dict() == expected


def test_dump_dict_is_to_dict_without_the_copies() -> None:
    """The raft dump pickles the state's own containers: the same value and the same
    reloaded state as to_dict(), with nothing rebuilt (asdict's copies were most of a
    5,000-node dump's CPU)."""
    from meshkit.cli import servicespec
    from meshkit.cluster.model import services as sv

    st = _state_with_nodes(3)
    cs.apply(st, {"op": "network_create", "network": {"id": "n" * 25, "name": "front"}})
    spec = servicespec.build_spec({"name": "web", "command": ["srv"], "network": ["front"]})
    sid = "s" * 25
    cs.apply(st, {"op": "service_create", "service": sv.new_service(sid, spec, 2.0), "now": 2.0})
    tasks = [sv.new_task(f"{i}" * 25, st.services[sid], i, 3.0) for i in range(1, 4)]
    cs.apply(st, {"op": "tasks_write", "create": tasks, "now": 3.0})
    st.nodes["1".zfill(25)].labels["zone"] = "b"
    dumped = st.dump_dict()
    assert dumped == st.to_dict()
    assert dumped["tasks"] is st.tasks and dumped["services"] is st.services  # no copies
    assert all(type(v) is dict for v in dumped["nodes"].values())  # plain dicts, as before
    loaded = pickle.loads(pickle.dumps(raftstore._Snapshot(st)))
    assert cs.ClusterState.from_dict(loaded).to_dict() == st.to_dict()
    # the reloaded state is its own: changing it leaves the original alone
    again = cs.ClusterState.from_dict(dumped)
    again.nodes["1".zfill(25)].labels["zone"] = "c"
    next(iter(again.tasks.values()))["state"] = "failed"
    assert st.nodes["1".zfill(25)].labels["zone"] == "b"
    assert st.to_dict() == loaded
    # a dump just unpickled is taken as it is (a follower loads a snapshot on its loop)
    owned = cs.ClusterState.from_dict(loaded, owned=True)
    assert owned.to_dict() == st.to_dict() and owned.tasks is loaded["tasks"]
    machine = raftstore._StateMachine()
    machine._deserialize(pickle.loads(pickle.dumps(raftstore._Snapshot(st))))
    assert machine.state.to_dict() == st.to_dict()
    with pytest.raises(cs.CommandError, match="invalid role"):
        bad = st.dump_dict()
        bad["nodes"] = {k: {**v, "role": "boss"} for k, v in bad["nodes"].items()}
        cs.ClusterState.from_dict(bad, owned=True)  # still checked


def test_compaction_dump_is_written_by_a_forked_child_and_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    addr = _addr(61)

    async def write() -> None:
        store = RaftStore(addr, [addr], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            await _until(lambda: store.is_leader, msg="leadership")
            node = cs.NodeRecord(id="a" * 25, hostname="m1", role="manager", addr="127.0.0.1")
            await store.submit(
                {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node.to_dict()}
            )
            for i in range(12):
                await store.submit({"op": "rotate_token", "role": "worker", "secret": f"s{i}"})
            await _until(lambda: (tmp_path / "dump").exists() and bool(forks), msg="a dump")
        finally:
            store.close()

    asyncio.run(write())
    with gzip.open(tmp_path / "dump", "rb") as f:
        dumped = pickle.load(f)
    state_dict = dumped[0][1]  # [pysyncobj's own fields, our consumer's]
    assert type(state_dict) is dict and state_dict["cluster_id"] == "c" * 25
    assert oct((tmp_path / "dump").stat().st_mode & 0o777) == "0o600"

    async def reload() -> None:
        store = RaftStore(addr, [addr], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            await _until(lambda: store.state.index == 13, msg="the state replayed")
            assert store.state.worker_secret == "s11"
        finally:
            store.close()

    asyncio.run(reload())


def test_stall_log_keeps_the_worst_and_the_recent_ones() -> None:
    log = StallLog()
    log.note(0.001, 0.001, now=1.0)  # not a stall
    log.note(0.25, 0.2, now=2.0)
    log.note(0.05, 0.0, now=3.0, waited=0.045)  # the host ran something else
    status = log.status()
    assert status["loop_stall_max_ms"] == 250.0
    assert status["loop_stalls"] == [[2.0, 250.0, 200.0, 0.0], [3.0, 50.0, 0.0, 45.0]]
    for i in range(StallLog.KEEP + 5):
        log.note(0.03, 0.03, now=10.0 + i)
    assert len(log.status()["loop_stalls"]) == StallLog.KEEP
    assert log.status()["loop_stall_max_ms"] == 250.0


def test_run_queue_wait_grows_while_a_busy_thread_shares_the_cpu() -> None:
    """runq_wait() reads the kernel's per-thread run-queue wait: two busy processes pinned on
    one CPU must each wait for it (the figure that tells a starved loop from a busy one)."""
    import subprocess
    import sys

    from meshkit.cluster.raft.store import runq_wait

    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("the kernel keeps no schedstat")
    cpu = min(os.sched_getaffinity(0))
    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    mine = os.sched_getaffinity(0)
    rival = subprocess.Popen(
        [sys.executable, "-c", spin], preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    try:
        os.sched_setaffinity(0, {cpu})
        before = runq_wait()
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        assert runq_wait() - before > 0.02
    finally:
        os.sched_setaffinity(0, mine)
        rival.wait()


def test_a_late_tick_timer_counts_as_a_loop_stall(tmp_path: Path) -> None:
    addr = _addr(62)

    async def main() -> None:
        store = RaftStore(addr, [addr], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            store._tick_due = time.monotonic() - 0.3  # the timer fires 300 ms after it was due
            store._tick()
            assert store.status()["loop_stall_max_ms"] >= 300.0
        finally:
            store.close()

    asyncio.run(main())


def _naive_carve(pools: list[str], mask: int, taken: list[str], from_top: bool) -> str | None:
    nets = [ipaddress.IPv4Network(t, strict=False) for t in taken]
    for pool in reversed(pools) if from_top else pools:
        subnets = list(ipaddress.IPv4Network(pool).subnets(new_prefix=mask))
        for cand in reversed(subnets) if from_top else subnets:
            if not any(cand.overlaps(n) for n in nets):
                return str(cand)
    return None


def test_carve_subnet_by_bisection_picks_what_a_scan_picks() -> None:
    rng = random.Random(7)
    pools = ["198.19.0.0/20", "198.18.64.0/22"]
    for _ in range(200):
        taken = []
        for _ in range(rng.randrange(0, 24)):
            pool = ipaddress.ip_network(rng.choice(pools))
            prefix = rng.choice([21, 22, 23, 24, 25, 26])
            prefix = max(prefix, pool.prefixlen)
            subs = list(pool.subnets(new_prefix=prefix))
            taken.append(str(rng.choice(subs)))
        mask = rng.choice([22, 24, 26])
        from_top = rng.random() < 0.5
        want = _naive_carve(pools, mask, taken, from_top)
        try:
            got: str | None = ipam.carve_subnet(pools, mask, taken, from_top=from_top)
        except ipam.IpamError:
            got = None
        assert got == want, (taken, mask, from_top)


def test_thousands_of_joins_each_get_a_gateway_subnet_until_the_pool_is_full() -> None:
    st = _state_with_nodes(300)  # a /16 pool holds 256 /24s: the last ones get none
    subnets = [s for s in st.gateway_subnets.values() if s]
    assert len(subnets) == 256 and len(set(subnets)) == 256
    assert st.gateway_subnets["a" * 25] == "198.19.255.0/24"  # from the top, in join order
    assert f"{299:025d}" not in st.gateway_subnets


class _Node:
    def __init__(self, state: cs.ClusterState) -> None:
        self.state = state


def test_network_map_is_built_once_per_burst_of_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real = netstate.netmap

    def counting(st: cs.ClusterState) -> dict[str, Any]:
        builds.append(st.index)
        return dict(real(st))

    monkeypatch.setattr(netstate, "netmap", counting)

    async def main() -> None:
        st = _state_with_nodes(2)
        methods = netapi.NetworkMethods(_Node(st))  # type: ignore[arg-type]
        for i in range(50):  # a raft tick applying 50 joins
            node = cs.NodeRecord(id=f"x{i:024d}", hostname=f"x{i}", role="worker", addr="1.2")
            cmd = {"op": "add_node", "node": node.to_dict(), "now": 3.0}
            cs.apply(st, cmd)
            methods.applied(cmd)
        assert builds == []  # nothing built while the commands are applied
        await _until(lambda: len(builds) == 1, msg="one build")
        assert methods.version == 1 and len(methods.current()["nodes"]) == 53
        node = cs.NodeRecord(id="y" * 25, hostname="y", role="worker", addr="127.0.0.1")
        cmd = {"op": "add_node", "node": node.to_dict(), "now": 4.0}
        cs.apply(st, cmd)
        methods.applied(cmd)
        assert "y" * 25 in methods.current()["nodes"]  # a read sees the change at once
        assert methods.version == 2

    asyncio.run(main())


def test_a_follower_back_from_a_stall_reads_before_it_calls_an_election(tmp_path: Path) -> None:
    me, gone = _addr(64), _addr(65)

    async def main() -> None:
        store = RaftStore(me, [me, gone], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            assert store._obj is not None
            store._tick_once()
            past = time.monotonic() - 5.0
            store._obj._SyncObj__raftElectionDeadline = past  # due long ago
            store._last_tick_end = past  # and the loop could not tick since
            store._tick_once()
            assert store._obj._SyncObj__raftElectionDeadline > time.monotonic()
            # a replica that ticked on time keeps its deadline
            store._obj._SyncObj__raftElectionDeadline = past
            store._last_tick_end = time.monotonic()
            store._tick_once()
            assert store._obj._SyncObj__raftElectionDeadline == past
        finally:
            store.close()

    asyncio.run(main())


def test_node_assignment_is_indexed_per_state_version() -> None:
    from meshkit.cluster.api.services import node_assignment
    from meshkit.cluster.model import services as sv

    st = _state_with_nodes(3)
    spec = {"name": "g", "mode": "global", "command": ["sleep", "1"]}
    cs.apply(st, {"op": "service_create", "service": {"id": "s" * 25, "spec": spec}, "now": 1.0})
    svc = st.services["s" * 25]
    tasks = [sv.new_task(f"t{i:024d}", svc, 0, 1.0) for i in range(3)]
    nodes = {f"t{i:024d}": f"{i:025d}" for i in range(3)}
    cs.apply(st, {"op": "tasks_write", "create": tasks, "node": nodes, "now": 2.0})
    for i in range(3):
        assert [t["id"] for t in node_assignment(st, f"{i:025d}")] == [f"t{i:024d}"]
    assert node_assignment(st, "a" * 25) == []
    more = [sv.new_task("u" * 25, svc, 0, 3.0)]
    cs.apply(st, {"op": "tasks_write", "create": more, "node": {"u" * 25: "a" * 25}, "now": 3.0})
    assert [t["id"] for t in node_assignment(st, "a" * 25)] == ["u" * 25]  # a new version
