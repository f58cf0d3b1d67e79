"""bench/cluster_probe.py: a stall is the host's (the loop's thread waited for a CPU) or ours."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cluster_probe as probe


def test_stalls_over_100_ms_are_split_by_the_run_queue_wait() -> None:
    stalls = [
        (1.0, 50.0, 40.0, 0.0),  # under 100 ms: not counted
        (2.0, 300.0, 20.0, 270.0),  # waited for a CPU: starved
        (3.0, 250.0, 240.0, 5.0),  # on the CPU: our work
        (4.0, 900.0, 30.0, 860.0),
        (5.0, 400.0, 10.0, float("nan")),  # an older manager: no wait figure
        (9.0, 999.0, 999.0, 0.0),  # outside the interval
    ]
    c = probe.classify(stalls, 1.0, 6.0)
    assert (c.over, c.starved, c.busy, c.unknown) == (4, 2, 1, 1)
    assert c.worst == (4.0, 900.0, 30.0, 860.0)
    assert c.worst_busy == (3.0, 250.0, 240.0, 5.0)
    assert "4 stalls > 100 ms (2 starved, 1 busy, 1 unknown), worst 900 ms" in c.text()
    assert probe.classify([], 0, 1).text() == "no stall over 100 ms"


def test_parse_stalls_reads_old_and_new_entries() -> None:
    got = probe.parse_stalls({"loop_stalls": [[1.0, 120.0, 10.0, 100.0], [2.0, 130.0, 5.0]]})
    assert got[0] == (1.0, 120.0, 10.0, 100.0)
    assert got[1][:3] == (2.0, 130.0, 5.0) and got[1][3] != got[1][3]


def test_sched_delta_counts_threads_seen_twice_only() -> None:
    before = {"1": (100.0, 50.0), "2": (10.0, 10.0)}
    after = {"1": (150.0, 80.0), "3": (500.0, 500.0)}  # 2 ended, 3 is new
    assert probe.sched_delta(before, after) == (50.0, 30.0)
    mine = probe.sched_ms(os.getpid())
    assert str(os.getpid()) in mine or not os.path.exists("/proc/self/task")


def test_loop_cpu_per_join_and_totals_text() -> None:
    assert probe.per_join(120.0, 0) == ""  # no node joined: no figure, not a division by 0
    assert probe.per_join(120.0, 40) == ", 3.00 ms per join"
    totals = probe.ProbeTotals(
        run_ms={"m1": 900.0}, wait_ms={"m1": 100.0}, loop_run_ms={"m1": 600.0}, joined=200
    )
    totals.seconds = 3.0
    assert "ran 300 ms/s (loop thread 200, 3.00 ms per join)" in totals.text("m1")
