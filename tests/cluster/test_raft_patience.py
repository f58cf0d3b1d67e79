"""Followers patient with a slow leader, prompt with a dead one (issue 20: no election caused
by load, a killed leader replaced fast)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshkit.cluster.model import state as cs
from meshkit.cluster.raft import lib
from meshkit.cluster.raft.store import RaftStore, RaftTimings

SECRET = "test-raft-secret"


def _addr(last: int) -> str:
    host = f"127.0.0.{last}"
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def test_a_gap_across_a_leader_change_is_not_a_slow_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lib, "_on_message", lambda *_args: None)  # pysyncobj's own handling
    conf = SimpleNamespace(raftMinTimeout=0.4, raftMaxTimeout=0.4, appendEntriesPeriod=0.1)
    follower = SimpleNamespace(_SyncObj__conf=conf)
    clock = [100.0]
    monkeypatch.setattr(lib.time, "monotonic", lambda: clock[0])
    old, new = object(), object()

    def append(after: float, leader: object) -> None:
        clock[0] += after
        lib._on_message_timed(follower, leader, {"type": "append_entries", "term": 1})

    append(0.1, old)
    append(0.1, old)
    append(1.5, new)  # the old leader died; an election later the new one speaks
    assert lib._patient_timeout(follower) == pytest.approx(0.4)
    append(0.9, new)  # the new leader itself silent for 0.9 s: that counts
    assert lib._patient_timeout(follower) == pytest.approx(0.4 + 1.8)


def test_a_closed_connection_to_the_leader_brings_the_election_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lib, "_on_node_disconnected", lambda *_args: None)
    leader, other = object(), object()
    follower = SimpleNamespace(
        _SyncObj__raftLeader=leader,
        _SyncObj__raftElectionDeadline=50.0,
        _isLeader=lambda: False,
    )
    monkeypatch.setattr(lib.time, "monotonic", lambda: 40.0)
    lib._on_node_disconnected_fast(follower, other)  # another follower: nothing to do
    assert follower._SyncObj__raftElectionDeadline == 50.0
    lib._on_node_disconnected_fast(follower, leader)
    low, high = lib.DEAD_LEADER_TIMEOUT
    assert 40.0 + low <= follower._SyncObj__raftElectionDeadline <= 40.0 + high
    follower._SyncObj__raftElectionDeadline = 40.01  # already sooner: kept
    lib._on_node_disconnected_fast(follower, leader)
    assert follower._SyncObj__raftElectionDeadline == 40.01


def test_a_stopped_leader_is_replaced_by_a_follower_that_saw_its_connection_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real stores: the leader stops (its sockets close); the followers' election is called
    because the connection closed, not at the end of their (long) election timeout."""
    # An election timeout of 4-5 s: an election called sooner can only be the closed
    # connection's (the log says which); a split vote is retried after it.
    timings = RaftTimings(
        tick=0.01, election_min=0.3, election_max=0.5, append_period=0.05, retry=0.3
    )
    slow = RaftTimings(
        tick=0.01,
        election_min=4.0,
        election_max=5.0,
        append_period=0.05,
        connection_timeout=5.0,
    )

    async def until(what: object, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():  # type: ignore[operator]
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def main() -> None:
        addrs = [_addr(41), _addr(42), _addr(43)]
        first = RaftStore(addrs[0], addrs, tmp_path / "0", SECRET, timings)
        others = [
            RaftStore(a, addrs, tmp_path / str(i + 1), SECRET, slow)
            for i, a in enumerate(addrs[1:])
        ]
        stores = [first, *others]
        try:
            await first.start()
            for s in others:
                await s.start()
            await until(lambda: first.is_leader and all(s.leader == addrs[0] for s in others))
            node = cs.NodeRecord(id="a" * 25, hostname="m1", role="manager", addr="127.0.0.1")
            await first.submit(
                {
                    "op": "init",
                    "cluster": {"cluster_id": "c" * 25},
                    "node": node.to_dict(),
                    "now": 1.0,
                }
            )
            with caplog.at_level(logging.WARNING, logger="meshkit.cluster.raft"):
                first.close()
                await until(lambda: any(s.is_leader for s in others))
            assert any("its connection closed" in r.getMessage() for r in caplog.records)
            survivor = next(s for s in others if s.is_leader)
            await survivor.submit({"op": "rotate_token", "role": "worker", "secret": "s1"})
        finally:
            for s in stores:
                s.close()

    asyncio.run(main())


def test_an_idle_link_is_not_a_dead_one_but_an_unanswered_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two followers' link is idle while a leader lives: the first vote request on it must go
    out (pysyncobj dropped the link instead); a link whose sends get no answer still drops."""
    clock = [100.0]
    monkeypatch.setattr(lib.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lib, "_tcp_send", lambda conn, message: lib._timeout_if_unanswered(conn))
    dropped: list[str] = []

    def link() -> SimpleNamespace:
        conn = SimpleNamespace(
            state=lib._CONNECTED, _TcpConnection__lastReadTime=clock[0], _TcpConnection__timeout=3.5
        )
        conn.disconnect = lambda: dropped.append("x")
        return conn

    follower_link = link()
    lib._send_noting_wait(follower_link, "handshake")  # never answered
    clock[0] += 60.0  # a minute of a live leader: nothing on this link
    lib._timeout_if_unanswered(follower_link)  # a read event (the other's vote request)
    lib._send_noting_wait(follower_link, "request_vote")
    assert dropped == []
    clock[0] += 1.0
    follower_link._TcpConnection__lastReadTime = clock[0]  # the vote came back

    leader_link = link()
    for _ in range(30):  # appends every 0.1 s, the follower answers
        clock[0] += 0.1
        lib._send_noting_wait(leader_link, "append")
        leader_link._TcpConnection__lastReadTime = clock[0]
    for _ in range(30):  # the follower is cut off: 3 s of unanswered appends, not yet dropped
        clock[0] += 0.1
        lib._send_noting_wait(leader_link, "append")
    assert dropped == []
    for _ in range(8):
        clock[0] += 0.1
        lib._send_noting_wait(leader_link, "append")
    assert dropped  # over the 3.5 s connection timeout with every send unanswered


def test_no_patience_once_the_leader_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lib, "_on_message", lambda *_args: None)
    conf = SimpleNamespace(raftMinTimeout=0.8, raftMaxTimeout=0.8, appendEntriesPeriod=0.1)
    follower = SimpleNamespace(_SyncObj__conf=conf, _SyncObj__raftState=lib._FOLLOWER)
    clock = [100.0]
    monkeypatch.setattr(lib.time, "monotonic", lambda: clock[0])
    leader = object()
    for gap in (0.1, 1.0):  # a leader seen slow: patience
        clock[0] += gap
        lib._on_message_timed(follower, leader, {"type": "append_entries", "term": 1})
    assert lib._patient_timeout(follower) == pytest.approx(0.8 + 2.0)
    follower._mk_leader_gone = True  # its connection closed
    assert lib._patient_timeout(follower) == pytest.approx(0.8)
    follower._mk_leader_gone = False
    follower._SyncObj__raftState = lib._CANDIDATE  # a split vote: the next round
    assert lib._patient_timeout(follower) == pytest.approx(0.8)
