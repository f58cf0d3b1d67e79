"""Writes whose outcome raft cannot confirm, and what the store reads back from its files: a
write in flight when quorum goes says "may or may not have been applied" (not "try again"); a
create with a request id applied twice makes one service; `recovery.read_state` rebuilds the
state from the snapshot and journal; `force_new_cluster` and `cluster_update` commands."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshkit.cluster.model import state as cs
from meshkit.cluster.model.services import new_service
from meshkit.cluster.raft import recovery
from meshkit.cluster.raft.store import RaftStore, RaftTimings, UnknownOutcome, check_hint

TIMINGS = RaftTimings(tick=0.01, election_min=0.3, election_max=0.8, append_period=0.05, retry=0.3)
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


def _run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def _init_cmd() -> dict[str, object]:
    node = cs.NodeRecord(id="a" * 25, hostname="m1", role="manager", addr="127.0.0.1")
    return {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node.to_dict(), "now": 1.0}


def _rotate(secret: str) -> dict[str, object]:
    return {"op": "rotate_token", "role": "worker", "secret": secret}


def test_write_in_flight_when_quorum_goes_is_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        addrs = [_addr(41), _addr(42), _addr(43)]
        stores = [
            RaftStore(a, addrs, tmp_path / str(i), SECRET, TIMINGS) for i, a in enumerate(addrs)
        ]
        try:
            for s in stores:
                await s.start()
            await _until(lambda: sum(s.is_leader for s in stores) == 1, msg="a leader")
            leader = next(s for s in stores if s.is_leader)
            await leader.submit(_init_cmd())
            followers = [s for s in stores if s is not leader]
            for f in followers:  # frozen: connected, but they never answer
                f._closed = True
                assert f._tick_handle is not None
                f._tick_handle.cancel()
            write = asyncio.ensure_future(leader.submit(_rotate("lost?")))
            await asyncio.sleep(0.3)
            assert not write.done()
            for f in followers:
                f.close()
            with pytest.raises(UnknownOutcome) as err:
                await write
            text = str(err.value)
            assert "no quorum: 1 of 3 managers reachable" in text
            assert "may or may not have been applied: check with `meshkit node ls`" in text
            assert leader.slowest_tick >= 0  # the loop kept ticking
        finally:
            for s in stores:
                s.close()

    _run(main)


def test_check_hint_names_the_listing() -> None:
    assert check_hint("service_create") == "meshkit service ls"
    assert check_hint("network_rm") == "meshkit network ls"
    assert check_hint("update_node") == "meshkit node ls"


def _service_cmd(service_id: str, request_id: str) -> dict[str, object]:
    spec = {"name": "web", "command": ["sleep", "1"]}
    return {
        "op": "service_create",
        "service": new_service(service_id, spec, 2.0),
        "request_id": request_id,
        "now": 2.0,
    }


def test_create_with_request_id_applies_once() -> None:
    st = cs.ClusterState()
    cs.apply(st, _init_cmd())
    first = cs.apply(st, _service_cmd("s" * 25, "r1"))
    again = cs.apply(st, _service_cmd("t" * 25, "r1"))  # the retry made a new id: same service
    assert again == {"service_id": "s" * 25, "name": "web", "replayed": True}
    assert list(st.services) == [first["service_id"]]
    with pytest.raises(cs.CommandError, match="already exists"):
        cs.apply(st, _service_cmd("u" * 25, "r2"))  # another request: the name is taken


def test_read_state_from_journal_and_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        addr = _addr(44)
        store = RaftStore(addr, [], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            await _until(lambda: store.is_leader, msg="leader")
            await store.submit(_init_cmd())
            for i in range(5):
                await store.submit(_rotate(f"s{i}"))
            assert store._obj is not None
            store._obj.forceLogCompaction()  # a snapshot, then more entries after it
            await _until(lambda: (tmp_path / "dump").exists(), msg="a snapshot")
            await asyncio.sleep(0.2)
            await store.submit(_rotate("after-snapshot"))
            expected = store.state.to_dict()
        finally:
            store.close()
        st, applied = recovery.read_state(tmp_path)
        assert applied >= 1
        assert st.worker_secret == "after-snapshot"
        assert st.to_dict() == expected
        aside = recovery.set_aside(tmp_path)
        assert (aside / "journal").exists() and not (tmp_path / "journal").exists()

    _run(main)


def test_read_state_refuses_an_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no cluster state"):
        recovery.read_state(tmp_path)


def _cluster_of_three() -> cs.ClusterState:
    st = cs.ClusterState()
    cs.apply(st, _init_cmd())
    for n, role in (("b", "manager"), ("c", "manager"), ("d", "worker")):
        node = cs.NodeRecord(id=n * 25, hostname=n, role=role, addr="127.0.0.1")
        cs.apply(st, {"op": "add_node", "node": node.to_dict()})
    return st


def test_force_new_cluster_keeps_one_manager() -> None:
    old = _cluster_of_three()
    st = cs.ClusterState()
    res = cs.apply(
        st, {"op": "force_new_cluster", "state": old.to_dict(), "node_id": "c" * 25, "now": 9.0}
    )
    assert res["demoted"] == sorted(["a" * 25, "b" * 25])
    assert [m.id for m in st.managers()] == ["c" * 25]
    assert st.nodes["a" * 25].status == cs.DOWN and st.nodes["d" * 25].status == cs.READY
    assert st.cluster_id == old.cluster_id
    with pytest.raises(cs.CommandError, match="already initialized"):
        cs.apply(st, {"op": "force_new_cluster", "state": old.to_dict(), "node_id": "c" * 25})


@pytest.mark.parametrize(
    ("settings", "error"),
    [({"heartbeat_period": 0}, "positive"), ({"task_history_limit": -1}, ">= 0"),
     ({"cert_lifetime": 60.0}, "at least 1h"), ({"autolock": "yes"}, "true or false"),
     ({"bogus": 1}, "unknown cluster setting")],
)  # fmt: skip
def test_cluster_update_checks(settings: dict[str, object], error: str) -> None:
    st = _cluster_of_three()
    with pytest.raises(cs.CommandError, match=error):
        cs.apply(st, {"op": "cluster_update", "settings": settings})


def test_cluster_update_sets_and_reports_changes() -> None:
    st = _cluster_of_three()
    cmd = {"op": "cluster_update", "settings": {"task_history_limit": 2, "heartbeat_period": 5.0}}
    assert cs.apply(st, cmd) == {"changed": ["task_history_limit"]}
    assert st.task_history_limit == 2
    cs.apply(st, {"op": "cluster_update", "settings": {"autolock": True, "unlock_key": "x"}})
    cs.apply(st, {"op": "cluster_update", "settings": {"autolock": False}})
    assert st.unlock_key == "" and not st.autolock


def test_retime_liveness_keeps_down_nodes_down_and_gives_alive_ones_an_old_period() -> None:
    from meshkit.cluster.model.clusterops import retime_liveness

    old = cs.Liveness(5.0)  # grace 15 s
    old.start(0.0)
    old.beat("up", 100.0)
    old.beat("gone", 80.0)  # 20 s ago: Down
    new = retime_liveness(old, 1.0, ["up", "gone"], 100.0)  # grace 3 s
    assert new.period == 1.0
    assert new.alive("up", 104.9) and not new.alive("up", 105.1)  # one old period
    longer = retime_liveness(old, 30.0, ["up", "gone"], 100.0)  # grace 90 s
    assert not longer.alive("gone", 100.0)  # a longer grace does not bring it back
    assert longer.alive("up", 185.0)
    longer.beat("gone", 101.0)
    assert longer.alive("gone", 101.0)
