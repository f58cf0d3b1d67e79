"""The results of bench/cluster_heartbeats.py (`ReadySample`, `ManagerLoad`, `Level`,
`Failover`) and how they are shown: the table on stdout, the goal verdict, the JSON file."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster_bench_managers import (
    Cluster,
)
from cluster_bench_util import (
    BUSY_WARN,
    GOAL_NODES,
    GOAL_PCT,
    median,
)


@dataclass
class ReadySample:
    join_via: str  # manager name (leader/follower in via_role)
    via_role: str
    beats_to: str  # the manager the node picked
    join_s: float
    leader_s: float  # join start -> Ready in node ls on the leader
    follower_s: float  # ... on the slowest follower (NaN with one manager)
    per_manager_s: dict[str, float]


@dataclass
class ManagerLoad:
    name: str
    addr: str
    leader: bool
    cpu_pct: float
    beats_per_s: float  # heartbeats it answered itself (followers pass theirs on in batches)
    stall_ms: float = float("nan")  # worst event-loop stall over the level (growth + window)
    window_stall_ms: float = float("nan")  # ... within the CPU window only
    stall_cpu_ms: float = float("nan")  # CPU the manager used during its worst stall
    stalls_over: int = 0  # stalls over 100 ms, growth + window (cluster_probe.GrowthMonitor)
    stalls_starved: int = 0  # ... in which the loop's thread waited for a CPU over half
    stalls_busy: int = 0  # ... the others: work on the loop (ours)
    wait_ms_per_s: float = float("nan")  # run-queue wait of its threads, growth + window
    loop_ms_per_join: float = float("nan")  # the loop thread's CPU over the growth per join
    cpu_ms_per_join: float = float("nan")  # the whole process's CPU over the growth per join
    forked_pct: float = 0.0  # of cpu_pct: its forked children (dump writers, plans) in the window
    raft_entries: int = -1  # raft entries it committed in the window (-1: unknown)


@dataclass
class Level:
    nodes: int
    window: float
    managers: list[ManagerLoad]
    managers_cpu_pct: float  # the sum
    busiest_cpu_pct: float
    leader: str
    leader_changed: bool
    client_cpu_pct: float
    manager_core_busy_pct: float  # all work on the managers' CPU, theirs and anyone's
    beats_per_s: float
    sent: int
    ok: int
    failed: int
    failed_over: int
    errors: dict[str, int]
    rtt_p50_ms: float
    rtt_p99_ms: float
    join_rate: float
    ready: list[ReadySample]
    tasks_running: int = -1  # --services: the global service's tasks running, of tasks_total
    tasks_total: int = -1
    watch_errors: dict[str, int] = field(default_factory=dict)
    join_retries: dict[str, int] = field(default_factory=dict)  # joins sent again, by error
    # TLS connections the simulated nodes opened to managers per joined node, from the growth's
    # start to one period after it (a handshake on a manager each): join calls (no client
    # certificate), and the nodes' own mutual-TLS connections (beats, tasks_watch)
    tls_join_per_join: float = float("nan")
    tls_mutual_per_join: float = float("nan")
    elections: int = 0  # raft terms begun from the start of the growth to the window's end

    def ready_median(self, attr: str) -> float:
        return median([getattr(s, attr) for s in self.ready if not math.isnan(getattr(s, attr))])


@dataclass
class Failover:
    stopped: str
    nodes: int
    window: float
    sent: int
    ok: int
    failed: int
    failed_over: int
    errors: dict[str, int]
    rtt_p99_ms: float
    by_manager: dict[str, int]
    ready_nodes: int  # simulated nodes Ready in the leader's node ls afterwards


# --------------------------------------------------------------------------- the report


def _num(value: float, unit: str, digits: int = 1) -> str:
    """A figure with its unit, or "-" when there is none (NaN)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}{unit}"


def goal_verdict(levels: list[Level]) -> tuple[str, bool | None]:
    lv = next((lv for lv in levels if lv.nodes == GOAL_NODES), None)
    if lv is None:
        return (
            f"goal: busiest manager under {GOAL_PCT:.0f}% of one core at {GOAL_NODES:,} nodes: "
            f"not measured (no {GOAL_NODES}-node fleet in this run)",
            None,
        )
    busiest = max(lv.managers, key=lambda lo: lo.cpu_pct)
    met = busiest.cpu_pct < GOAL_PCT
    role = "leader" if busiest.leader else "follower"
    return (
        f"goal: busiest manager under {GOAL_PCT:.0f}% of one core at {GOAL_NODES:,} nodes: "
        f"{busiest.name} ({role}) {busiest.cpu_pct:.1f}% -> {'met' if met else 'MISSED'}",
        met,
    )


def print_report(
    levels: list[Level], failover: Failover | None, cluster: Cluster, args: argparse.Namespace
) -> bool | None:
    names = [m.name for m in cluster.managers]
    print()
    pinning = (
        "not pinned"
        if args.manager_core is None
        else f"managers on CPU {args.manager_core}, simulated nodes on CPU {args.client_core}"
        if not args.leader_alone
        else f"the first leader alone on CPU {args.manager_core}, the other managers with the "
        f"simulated nodes on CPU {args.client_core} (--leader-alone)"
    )
    print(
        f"heartbeat load on {len(names)} manager(s) (period {args.period:g} s, window "
        f"{args.window:g} s, {os.cpu_count()} CPUs, {pinning}; 100 % = one core)"
    )
    print(
        "managers: "
        + ", ".join(
            f"{m.name} = {m.api_addr}{' (init)' if m.index == 0 else ''}" for m in cluster.managers
        )
        + "; L = the raft leader (followers pass their beats to it in batches)"
    )
    head = [f"{'nodes':>6}"]
    head += [f"{n + ' CPU':>9}" for n in names]
    head += [f"{n + ' stall':>9}" for n in names]
    if len(names) > 1:
        head.append(f"{'sum':>7}")
    head += [
        f"{'per beat':>8}",
        f"{'clients':>7}",
        f"{'beats/s':>8}",
        f"{'failed':>6}",
        f"{'rtt p50':>7}",
        f"{'rtt p99':>7}",
        f"{'join':>6}",
        f"{'Ready L':>7}",
    ]
    if len(names) > 1:
        head.append(f"{'Ready F':>7}")
    header = " ".join(head)
    print(header)
    print("-" * len(header))
    idle = next((lv.managers_cpu_pct for lv in levels if lv.nodes == 0), None)
    for lv in levels:
        loads = {lo.name: lo for lo in lv.managers}
        row = [f"{lv.nodes:>6}"]
        for n in names:
            lo = loads.get(n)
            cell = "-" if lo is None else f"{lo.cpu_pct:.1f}%" + ("L" if lo.leader else " ")
            row.append(f"{cell:>9}")
        for n in names:
            lo = loads.get(n)
            cell = "-" if lo is None else _num(lo.stall_ms, "ms", 0)
            row.append(f"{cell:>9}")
        if len(names) > 1:
            row.append(f"{lv.managers_cpu_pct:>6.1f}%")
        per_beat = "-"
        if idle is not None and lv.beats_per_s > 0:
            # all managers' CPU above the idle baseline, per heartbeat answered
            per_beat = f"{10_000 * (lv.managers_cpu_pct - idle) / lv.beats_per_s:.0f}us"
        row += [
            f"{per_beat:>8}",
            f"{lv.client_cpu_pct:>6.1f}%",
            f"{lv.beats_per_s:>8.1f}",
            f"{lv.failed:>6}",
            f"{_num(lv.rtt_p50_ms, 'ms'):>7}",
            f"{_num(lv.rtt_p99_ms, 'ms'):>7}",
            f"{_num(lv.ready_median('join_s'), 's', 2):>6}",
            f"{_num(lv.ready_median('leader_s'), 's', 2):>7}",
        ]
        if len(names) > 1:
            row.append(f"{_num(lv.ready_median('follower_s'), 's', 2):>7}")
        print(" ".join(row))
    print(
        "CPU = the manager process and the raft dump writers it forks; stall = its worst "
        "event-loop stall (its raft tick timer late by that much, or a raft tick that long) "
        "from the start of the fleet's growth to the end of the window; "
        "per beat = all managers' CPU above the idle (0-node) baseline per heartbeat answered; "
        "clients = this process (the simulated nodes); join = a new node's join call; "
        "Ready L / Ready F = from that join's start until node ls on the leader / on the "
        "slowest follower lists it Ready (medians of the samples)"
    )
    for lv in levels:
        notes = []
        if len(names) > 1 and lv.beats_per_s > 0:
            spread = ", ".join(f"{lo.name} {lo.beats_per_s:.1f}" for lo in lv.managers)
            notes.append(f"beats/s answered per manager: {spread}")
        if lv.leader_changed:
            notes.append("the raft leader changed during the window")
        if lv.failed_over:
            notes.append(f"{lv.failed_over} beats failed over to another manager")
        if lv.errors:
            notes.append(f"errors: {lv.errors}")
        if lv.tasks_total >= 0:
            notes.append(
                f"global service: {lv.tasks_running} of {lv.tasks_total} tasks running "
                "(one per simulated node)"
            )
        if lv.watch_errors:
            notes.append(f"task watch/report errors: {lv.watch_errors}")
        if any(not math.isnan(lo.cpu_ms_per_join) for lo in lv.managers):
            per_join = ", ".join(
                f"{lo.name}{'*' if lo.leader else ''} {lo.cpu_ms_per_join:.2f} ms "
                f"({lo.stalls_over} stalls > 100 ms: {lo.stalls_starved} starved, "
                f"{lo.stalls_busy} busy)"
                for lo in lv.managers
            )
            notes.append(f"growth: CPU per join {per_join}")
        if not math.isnan(lv.tls_join_per_join):
            notes.append(
                f"TLS connections to managers per joined node: {lv.tls_join_per_join:.2f} join "
                f"+ {lv.tls_mutual_per_join:.2f} mutual (growth + one period)"
            )
        if lv.join_retries:
            notes.append(f"joins sent again (same request id) after: {lv.join_retries}")
        if lv.elections:
            notes.append(f"{lv.elections} raft election(s) during growth or window")
        if notes:
            print(f"  {lv.nodes} nodes: " + "; ".join(notes))
    busy = [lv for lv in levels if not math.isnan(lv.manager_core_busy_pct)]
    if busy and args.manager_core is not None:
        other = [
            lv.manager_core_busy_pct
            - lv.managers_cpu_pct
            - (lv.client_cpu_pct if args.client_core == args.manager_core else 0.0)
            for lv in busy
        ]
        worst = max(other)
        line = (
            f"other work on CPU {args.manager_core} (the managers' core) during the windows: "
            f"{max(0.0, min(other)):.0f}-{max(0.0, worst):.0f}% of it"
        )
        if worst > BUSY_WARN:
            line += (
                " -- the machine was shared; per-process CPU shares still hold, latencies and "
                "Ready times are inflated"
            )
        print(line)
    if failover is not None:
        spread = ", ".join(f"{k} {v}" for k, v in sorted(failover.by_manager.items()))
        print(
            f"failover: {failover.stopped} (a follower) stopped with {failover.nodes} nodes "
            f"beating; over the next {failover.window:.1f} s {failover.ok} beats answered "
            f"({spread}), {failover.failed_over} of them by the next manager in the list, "
            f"{failover.failed} failed, p99 {_num(failover.rtt_p99_ms, 'ms')}; "
            f"{failover.ready_nodes} of {failover.nodes} nodes Ready on the leader afterwards"
        )
    text, met = goal_verdict(levels)
    print(text)
    return met


def write_json(
    path: Path,
    levels: list[Level],
    failover: Failover | None,
    cluster: Cluster,
    args: argparse.Namespace,
    met: bool | None,
) -> None:
    out = {
        "period": args.period,
        "window": args.window,
        "cpus": os.cpu_count(),
        "cores": {
            "managers": args.manager_core,
            "clients": args.client_core,
            "leader_alone": args.leader_alone,
        },
        "managers": [{"name": m.name, "addr": m.api_addr} for m in cluster.managers],
        "levels": [asdict(lv) for lv in levels],
        "failover": None if failover is None else asdict(failover),
        "goal": {"nodes": GOAL_NODES, "busiest_below_pct": GOAL_PCT, "met": met},
    }
    path.write_text(json.dumps(out, indent=2, allow_nan=True) + "\n")
