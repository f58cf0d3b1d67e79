"""EtcdStore against a real etcd (Debian's etcd-server on 127.0.0.1, free ports, a temporary
data dir): commands applied in revision order by every store, one leader at a time and the
duties moving when it dies, snapshots and the trimmed log a new store catches up from, a
watch compacted away, etcd lost and back. Plus `--store` parsing."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft.etcd_replica import EtcdTimings
from meshkit.cluster.raft.etcd_spec import StoreSpec, StoreSpecError, parse_store
from meshkit.cluster.raft.etcd_store import EtcdStore
from meshkit.cluster.raft.store import NoQuorum
from support.etcd import Etcd, running_etcd

FAST = EtcdTimings(lease_ttl=2, keepalive=0.5, request_timeout=2.0, retry=0.2)


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    with running_etcd() as e:
        yield e


def node(i: int) -> dict[str, Any]:
    return cstate.NodeRecord(
        id=f"n{i:04d}", hostname=f"h{i}", role="manager" if i == 0 else "worker", addr="127.0.0.1"
    ).to_dict()


async def until(what: Callable[[], bool], timeout: float, msg: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not what():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {msg}")
        await asyncio.sleep(0.02)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


def compact(e: Etcd, rev: int) -> None:
    body = json.dumps({"revision": str(rev), "physical": True}).encode()
    req = urllib.request.Request(e.http + "/v3/kv/compaction", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def test_parse_store_flags() -> None:
    spec = parse_store("etcd://127.0.0.1:2379,198.51.100.7:2379")
    assert spec.endpoints == [("127.0.0.1", 2379), ("198.51.100.7", 2379)] and not spec.tls
    assert parse_store("etcds://db.example:2379").tls
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    for bad, why in (
        ("http://127.0.0.1:2379", "expected etcd://"),
        ("etcd://", "no etcd endpoint"),
        ("etcd://127.0.0.1", "is not HOST:PORT"),
        ("etcd://127.0.0.1:99999", "out of range"),
        ("etcd://127.0.0.1:x", "not a port number"),
    ):
        with pytest.raises(StoreSpecError, match=why):
            parse_store(bad)
    with pytest.raises(StoreSpecError, match="--store-cacert /nonexistent: no such file"):
        parse_store("etcds://127.0.0.1:2379", cacert="/nonexistent")
    with pytest.raises(StoreSpecError, match="go together"):
        parse_store("etcds://127.0.0.1:2379", cert="/etc/hostname")


def test_log_leader_snapshot_and_catch_up(etcd: Etcd) -> None:
    async def go() -> None:
        spec = parse_store(etcd.url)
        a = EtcdStore("127.0.0.1:1", spec, "c-log", FAST)
        b = EtcdStore("127.0.0.1:2", spec, "c-log", FAST)
        await a.start()
        await b.start()
        await until(lambda: a.is_leader or b.is_leader, 5, "a leader")
        assert not (a.is_leader and b.is_leader)
        leader, other = (a, b) if a.is_leader else (b, a)
        await a.submit({"op": "init", "cluster": {"cluster_id": "c-log"}, "node": node(0)})
        # writes through either store; every store applies all of them, in the same order
        for i in range(1, 21):
            await (a if i % 2 else b).submit({"op": "add_node", "node": node(i)})
        with pytest.raises(cstate.CommandError, match="already exists"):
            await b.submit({"op": "add_node", "node": node(3)})
        await until(lambda: len(other.state.nodes) == 21, 5, "both applied")
        assert list(a.state.nodes) == list(b.state.nodes)
        assert other.members == leader.members == ["127.0.0.1:1", "127.0.0.1:2"]

        rev = await leader.write_snapshot()
        # trimmed up to the snapshot (the deletions come back through the watch)
        await until(lambda: leader.status()["log_entries"] == 0, 5, "log trimmed")
        await leader.submit({"op": "add_node", "node": node(21)})
        # a new store: the snapshot, then the log after it
        c = EtcdStore("127.0.0.1:3", spec, "c-log", FAST)
        await c.start()
        assert c.snapshot_rev == rev and len(c.state.nodes) == 22
        assert c.state.to_dict() == leader.state.to_dict()

        # the leader dies without a word (its lease runs out): the duties move
        leader._closed = True
        for task in leader._tasks:
            task.cancel()
        await until(lambda: other.is_leader or c.is_leader, 10, "a new leader")
        assert not (other.is_leader and c.is_leader)
        for s in (other, c):
            s.close()
        await asyncio.sleep(0.1)

    run(go)


def test_a_leader_that_lost_its_lease_cannot_write(etcd: Etcd) -> None:
    # fencing: a leader cut off long enough for etcd to expire its lease, that has not noticed
    # yet, must not add commands next to its successor's
    async def go() -> None:
        spec = parse_store(etcd.url)
        a = EtcdStore("127.0.0.1:1", spec, "c-fence", FAST)
        b = EtcdStore("127.0.0.1:2", spec, "c-fence", FAST)
        await a.start()
        await b.start()
        await until(lambda: a.is_leader or b.is_leader, 5, "a leader")
        leader, other = (a, b) if a.is_leader else (b, a)
        await leader.submit({"op": "init", "cluster": {"cluster_id": "c-fence"}, "node": node(0)})
        for task in leader._tasks:  # it hears nothing more from etcd
            task.cancel()
        body = json.dumps({"ID": str(leader.lease.id)}).encode()
        req = urllib.request.Request(etcd.http + "/v3/lease/revoke", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
        await until(lambda: other.is_leader, 10, "the other store takes over")
        # what the cut-off leader still believes, a moment before its next keep-alive
        leader._watching = True
        leader._leader, leader._leader_lease = leader.self_addr, leader.lease.id
        leader.lease.ok_at = time.monotonic()
        assert leader.is_leader
        with pytest.raises(NoQuorum, match="lost the cluster store's leader key"):
            await leader.submit({"op": "add_node", "node": node(7)})
        await other.submit({"op": "add_node", "node": node(8)})
        assert "n0008" in other.state.nodes and "n0007" not in other.state.nodes
        leader._closed = True
        other.close()
        await asyncio.sleep(0.1)

    run(go)


def test_compacted_watch_and_etcd_lost(etcd: Etcd) -> None:
    async def go() -> None:
        spec = parse_store(etcd.url)
        a = EtcdStore("127.0.0.1:1", spec, "c-lost", FAST)
        await a.start()
        await a.submit({"op": "init", "cluster": {"cluster_id": "c-lost"}, "node": node(0)})
        b = EtcdStore("127.0.0.1:2", spec, "c-lost", FAST)
        await b.start()
        # b stops following for a while; the log is snapshotted, trimmed and compacted
        b_applied = b.applied
        for task in b._tasks:
            task.cancel()
        for i in range(1, 6):
            await a.submit({"op": "add_node", "node": node(i)})
        await until(lambda: a.is_leader, 5, "a leads")
        await a.write_snapshot()
        await a.submit({"op": "add_node", "node": node(6)})
        compact(etcd, a.applied)
        assert b.applied == b_applied
        b._tasks = [asyncio.ensure_future(b._watch_loop())]
        await until(lambda: len(b.state.nodes) == 7, 10, "b caught up from the snapshot")

        # etcd lost: writes fail at once, naming it; back: the store recovers
        etcd.stop()
        await until(lambda: not a.has_quorum, 5, "a sees etcd gone")
        with pytest.raises(NoQuorum, match=f"etcd {etcd.http}.*unreachable"):
            await a.submit({"op": "add_node", "node": node(7)})
        assert "unreachable" in a.no_quorum().args[0]
        etcd.start()
        await until(lambda: a.has_quorum, 15, "a follows etcd again")
        await a.submit({"op": "add_node", "node": node(7)})
        await until(lambda: len(b.state.nodes) == 8, 10, "b applied it")
        a.close()
        b.close()
        await asyncio.sleep(0.1)

    run(go)


def test_start_with_etcd_unreachable_names_it() -> None:
    async def go() -> None:
        s = EtcdStore("127.0.0.1:1", parse_store("etcd://127.0.0.1:9"), "c-none", FAST)
        with pytest.raises(
            Exception,
            match=r"cannot start the cluster store on etcd "
            r"etcd://127.0.0.1:9: cannot reach etcd at http://127.0.0.1:9",
        ):
            await s.start()

    run(go)


def test_tls_to_etcd_with_a_client_certificate() -> None:
    with running_etcd(tls=True) as e:

        async def go() -> None:
            good = parse_store(e.url, cacert=e.ca, cert=e.client_cert, key=e.client_key)
            s = EtcdStore("127.0.0.1:1", good, "c-tls", FAST)
            await s.start()
            await s.submit({"op": "init", "cluster": {"cluster_id": "c-tls"}, "node": node(0)})
            assert s.state.cluster_id == "c-tls" and s.status()["endpoints"] == e.http
            s.close()
            # no client certificate: etcd refuses the handshake, and the error says where
            bare = parse_store(e.url, cacert=e.ca)
            with pytest.raises(Exception, match=f"cannot start the cluster store on etcd {e.url}"):
                await EtcdStore("127.0.0.1:2", bare, "c-tls", FAST).start()
            await asyncio.sleep(0.1)

        run(go)
