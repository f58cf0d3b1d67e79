"""An old raft leader back from a partition with an uncommitted entry of its own term must
catch up (meshkit.cluster.raft.lib's repair of pysyncobj's follower answers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshkit.cluster.raft import lib
from support import netns

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cluster_chaos.py"


def _follower(commit: int, last: int) -> tuple[Any, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    stub = SimpleNamespace(
        _SyncObj__raftCommitIndex=commit,
        _SyncObj__getCurrentLogIndex=lambda: last,
        _SyncObj__transport=SimpleNamespace(send=lambda node, msg: sent.append(msg)),
    )
    return stub, sent


def test_refusals_ask_from_no_later_than_the_commit_index() -> None:
    send = lib.SyncObj._SyncObj__sendNextNodeIdx
    assert send is lib._send_next_node_idx_from_commit
    # entries 1..45, 45 of an old term and not committed (commit index 44)
    f, sent = _follower(commit=44, last=45)
    send(f, "leader", success=False, reset=True)  # "no entry at prevLogIdx" (a later batch)
    send(f, "leader", nextNodeIdx=45, success=False, reset=True)  # "entry 45 has another term"
    assert [m["next_node_idx"] for m in sent] == [45, 45]  # pysyncobj alone said 46, then 45
    assert all(m["reset"] and not m["success"] for m in sent)


def test_acceptances_and_transmissions_are_unchanged() -> None:
    send = lib.SyncObj._SyncObj__sendNextNodeIdx
    f, sent = _follower(commit=10, last=20)
    send(f, "leader", nextNodeIdx=21, success=True)
    send(f, "leader", success=False, reset=False)  # a snapshot part received
    send(f, "leader", nextNodeIdx=8, success=False, reset=True)  # already below the commit
    assert [m["next_node_idx"] for m in sent] == [21, 21, 8]


def test_partitioned_leader_catches_up_after_the_heal() -> None:
    """The leader is cut off while a client writes through it; after the heal every manager
    must list the same services (before the repair it stayed at its old commit index)."""
    if reason := netns.available():
        pytest.skip(reason)
    argv = [sys.executable, str(BENCH), "--kills", "0", "--partition-seconds", "5"]
    argv += ["--warmup", "2", "--dwell", "3", "--deadline", "120"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "managers agree: yes" in proc.stdout
    assert "lost (acked, not in state) 0" in proc.stdout
