#!/usr/bin/env python3
"""Heartbeat load on three managers: their CPU under 100, 500 and 1,000 simulated nodes.

Three real managers, each its own process with its own data dir and socket in a temporary
directory: ``meshkit node init`` on 127.0.0.1, then ``meshkit node join --token <manager
token>`` on 127.0.0.2 and on 127.0.0.3 (free ports); the run starts once ``node ls`` on the
first shows three managers Ready, one Leader. ``--managers 1`` runs the first alone.

Simulated worker nodes run in this process, on one uvloop loop: each one joins for real
(``join`` with the worker token and a CSR, over TLS, through the managers in turn), gets its
own certificate, and then heartbeats every period (the managers' ``--dispatcher-heartbeat``,
default 5 s, re-read from every reply; phases spread evenly at random) the way the agent's
worker does (its heartbeat through ``meshkit.cluster.node.managers.ManagerClient.ask``): it
keeps the manager list of its join reply (then of each heartbeat reply), starts at index
``randrange(65536)`` of it, calls ``heartbeat {"node_id", "status"}`` with mutual TLS
(``RpcClient``, 5 s timeout), and when a manager answers with one of the agent's
``FAILOVER_CODES`` (unreachable, timeout, unavailable, not_manager, ...) it moves its index
on and tries the next manager in the same beat. A follower passes the beats it takes to
the leader in batches (``beats``), about once a second.

For each fleet size (grown in place: none (the idle baseline), 100, then 400 more, then 500
more):

1. warm-up of one period plus a second, so every node is beating at steady state;
2. each manager's CPU share over a window: utime + stime from /proc/<pid>/stat at both ends,
   divided by the window (100 % = one core busy), the leader marked, and their sum;
3. heartbeats answered per second, failed, and their round-trip time (median and p99; a beat
   that failed over counts from its first try);
4. the time for a new node to show Ready in ``node ls``: a node joins (through the managers in
   turn), starts beating at once, and ``node_ls`` is asked every 50 ms on the leader's and on
   the followers' sockets until each lists the node Ready (several samples, medians shown;
   the follower figure is the slowest follower).

Then, with three or more managers, failover: one follower is stopped (SIGTERM) and for one
and a half periods every beat must still succeed (the nodes that used it move on in the same
beat), and the leader's ``node ls`` must still list every simulated node Ready.

By default all managers share the first CPU and this process (the simulated nodes) runs on the
second; the clients' own CPU is shown too: when it nears 100 % the clients, not the managers,
limit the rate. The goal (from the issue): at 1,000 nodes the busiest manager is under 50 % of
one core.

    python bench/cluster_heartbeats.py                  # 0 (idle), 100, 500, 1000 nodes, 30 s
    python bench/cluster_heartbeats.py --quick          # smoke test: 0, 10, 30 nodes, 1 s beats
    python bench/cluster_heartbeats.py --nodes 100,2000 --window 60 --json out.json
    python bench/cluster_heartbeats.py --managers 1     # one manager, no raft followers
    python bench/cluster_heartbeats.py --manager-core 1 --client-core 0   # or --no-pin

Everything started here is stopped by pid when the run ends (also on Ctrl-C, SIGTERM and
failures); the temporary directory is removed. Exit status: 0 when every step ran and no beat
failed, 1 with a message otherwise, 3 with --check-goals when the goal was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"

try:
    import meshkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(SRC_DIR))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


import cluster_probe as probe  # noqa: E402  (the stall classes, run-queue waits, py-spy)
from cluster_bench_fleet import (  # noqa: E402
    BeatStats,
    Fleet,
)
from cluster_bench_managers import (  # noqa: E402
    Cluster,
    Manager,
)
from cluster_bench_report import (  # noqa: E402
    Failover,
    Level,
    ManagerLoad,
    ReadySample,
    print_report,
    write_json,
)
from cluster_bench_util import (  # noqa: E402
    SERVICE,
    BenchError,
    busy_pct,
    children_cpu_seconds,
    core_jiffies,
    log,
    move_to_core,
    percentile,
    pin,
    proc_cpu_seconds,
    raise_fd_limit,
    self_cpu_seconds,
    split_addr,
    view_get,
)
from meshkit.cluster.rpc.tokens import parse_token  # noqa: E402
from meshkit.cluster.rpc.transport import (  # noqa: E402
    RpcError,
    check_ca_bundle,
    fetch_ca_bundle,
)

# --------------------------------------------------------------------------- Ready timing


async def node_is_ready(m: Manager, node_id: str) -> bool:
    reply = await m.call("node_ls")
    for view in reply.get("nodes", []):
        if view_get(view, "ID") == node_id:
            return str(view_get(view, "Status")).lower() == "ready"
    return False


async def time_to_ready(fleet: Fleet, leader: Manager) -> ReadySample:
    """A new node joins and beats at once; node ls is polled on every live manager."""
    via = fleet.join_target()
    began = time.perf_counter()
    node = await fleet.join_one(len(fleet.nodes), via)
    joined = time.perf_counter() - began
    fleet.nodes.append(node)
    fleet.start_beating(node, 0.0)
    pending = {m.name: m for m in fleet.cluster.live()}
    seen: dict[str, float] = {}
    deadline = began + 4 * fleet.period + 30
    while pending:
        if time.perf_counter() > deadline:
            raise BenchError(
                f"node {node.node_id} (joined through {via.name}) did not show Ready in node ls "
                f"on {', '.join(pending)} within {deadline - began:.0f} s"
            )
        ms = list(pending.values())
        results = await asyncio.gather(*(node_is_ready(m, node.node_id) for m in ms))
        now = time.perf_counter() - began
        for m, ready in zip(ms, results, strict=True):
            if ready:
                seen[m.name] = now
                del pending[m.name]
        if pending:
            await asyncio.sleep(0.05)
    followers = [t for name, t in seen.items() if name != leader.name]
    picked = fleet.cluster.by_addr(split_addr(fleet.picked(node))[0])
    return ReadySample(
        join_via=via.name,
        via_role="leader" if via is leader else "follower",
        beats_to=picked.name if picked else fleet.picked(node),
        join_s=joined,
        leader_s=seen[leader.name],
        follower_s=max(followers) if followers else float("nan"),
        per_manager_s=seen,
    )


# --------------------------------------------------------------------------- the run


async def service_tasks(leader: Manager, nodes: int) -> tuple[int, int]:
    """--services: (running, wanted) tasks of the global service on the leader (wanted: those
    whose desired state is running), once `nodes` of them run or 60 s have passed."""
    deadline = time.monotonic() + 60
    while True:
        reply = await leader.call("service_ps", {"service": SERVICE})
        wanted = [t for t in reply.get("tasks") or [] if t.get("DesiredState") == "running"]
        running = sum(1 for t in wanted if t.get("State") == "running")
        if running >= nodes or time.monotonic() > deadline:
            return running, len(wanted)
        await asyncio.sleep(1.0)


async def raft_term(cluster: Cluster) -> int:
    """The highest raft term the live managers are in (each election begins a new term)."""
    terms = [0]
    for m in cluster.live():
        with contextlib.suppress(RpcError):
            terms.append(int((await m.call("cluster_status")).get("term") or 0))
    return max(terms)


async def commit_index(m: Manager) -> int:
    """The manager's raft commit index (-1 when it does not answer)."""
    try:
        return int((await m.call("cluster_status")).get("commit_index") or 0)
    except RpcError:
        return -1


async def loop_stalls(m: Manager) -> list[probe.Stall]:
    """The manager's recent event-loop stalls: (monotonic time, ms, CPU ms the process used
    meanwhile, ms its loop's thread waited for a CPU), from ``cluster_status`` (the raft
    store's tick timer, which fires late by as long as the loop was held)."""
    try:
        st = await m.call("cluster_status")
    except RpcError:
        return []
    return probe.parse_stalls(st)


def worst_stall(stalls: list[probe.Stall], since: float, until: float) -> float:
    """The longest stall that ended within [since, until] (0 when none over 20 ms)."""
    return max((s[1] for s in stalls if since <= s[0] <= until), default=0.0)


def worst_stall_cpu(stalls: list[probe.Stall], since: float, until: float) -> float:
    """The CPU the process used during that longest stall (far below it: the host starved it)."""
    inside = [(s[1], s[2]) for s in stalls if since <= s[0] <= until]
    return max(inside)[1] if inside else 0.0


async def measure_level(
    args: argparse.Namespace, cluster: Cluster, fleet: Fleet, count: int
) -> Level:
    log(f"growing the fleet to {count} nodes ...")
    level_began = time.monotonic()
    term0 = await raft_term(cluster)
    monitor = probe.GrowthMonitor(cluster.live, lambda: len(fleet.nodes), log, args.probe_every)
    monitor.start()
    spy = None
    if args.profile_leader and count == args.nodes[-1]:
        spy = probe.PySpy((await cluster.leader()).pid, Path(args.profile_leader), args.client_core)
    connects0 = (fleet.join_connects, fleet.node_connects, len(fleet.nodes))
    grow_cpu0 = {m.name: proc_cpu_seconds(m.pid) for m in cluster.live()}
    try:
        join_rate = await fleet.grow_to(count)
        # each manager's whole CPU (loop, handshake threads, reaped children) over the growth
        grow_cpu = {
            m.name: proc_cpu_seconds(m.pid) - grow_cpu0[m.name]
            for m in cluster.live()
            if m.name in grow_cpu0
        }
    finally:
        if spy is not None:
            spy.stop()
            log(f"py-spy profile of the leader during the growth: {args.profile_leader}")
    cluster.check_alive()
    await asyncio.sleep(fleet.period + 1.0)  # every node beating at steady state
    joined = len(fleet.nodes) - connects0[2]
    tls_per_join = (
        (fleet.join_connects - connects0[0], fleet.node_connects - connects0[1], joined)
        if joined
        else None
    )
    leader0 = await cluster.leader()
    fleet.stats = BeatStats()
    live = cluster.live()
    spies = []
    if args.profile_window and count == args.nodes[-1]:
        # every manager, so that the leader's extra work shows against a follower's
        spies = [
            probe.PySpy(
                m.pid,
                Path(f"{args.profile_window}.{m.name}{'-leader' if m is leader0 else ''}"),
                args.client_core,
            )
            for m in live
        ]
    index0 = {m.name: await commit_index(m) for m in live}
    cpu0 = {m.name: proc_cpu_seconds(m.pid) for m in live}
    kids0 = {m.name: children_cpu_seconds(m.pid) for m in live}
    core0, self0, t0 = core_jiffies(args.manager_core), self_cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.window)
    cpu1 = {m.name: proc_cpu_seconds(m.pid) for m in live}
    kids1 = {m.name: children_cpu_seconds(m.pid) for m in live}
    index1 = {m.name: await commit_index(m) for m in live}
    for spy_w in spies:
        spy_w.stop()
    if spies:
        log(f"py-spy profiles of the managers during the window: {args.profile_window}.*")
    core1, self1, t1 = core_jiffies(args.manager_core), self_cpu_seconds(), time.monotonic()
    stats = fleet.stats
    fleet.stats = BeatStats()  # the new nodes timed below count in no window
    totals = await monitor.stop()
    for m in live:
        log(f"  growth + window, {totals.text(m.name)}")
    cluster.check_alive()
    leader1 = await cluster.leader()
    elapsed = t1 - t0
    stalls = {m.name: await loop_stalls(m) for m in live}
    loads = [
        ManagerLoad(
            name=m.name,
            addr=m.api_addr,
            leader=m is leader1,
            cpu_pct=100.0 * (cpu1[m.name] - cpu0[m.name]) / elapsed,
            forked_pct=100.0 * (kids1[m.name] - kids0[m.name]) / elapsed,
            raft_entries=(
                index1[m.name] - index0[m.name]
                if index0[m.name] >= 0 and index1[m.name] >= 0
                else -1
            ),
            beats_per_s=stats.by_manager.get(m.api_addr, 0) / elapsed,
            stall_ms=worst_stall(stalls[m.name], level_began, t1),
            stall_cpu_ms=worst_stall_cpu(stalls[m.name], level_began, t1),
            window_stall_ms=worst_stall(stalls[m.name], t0, t1),
            stalls_over=totals.classes.get(m.name, probe.StallClasses()).over,
            stalls_starved=totals.classes.get(m.name, probe.StallClasses()).starved,
            stalls_busy=totals.classes.get(m.name, probe.StallClasses()).busy,
            wait_ms_per_s=totals.wait_ms.get(m.name, 0.0) / max(totals.seconds, 1e-9),
            cpu_ms_per_join=(
                1000.0 * grow_cpu[m.name] / joined
                if joined > 0 and m.name in grow_cpu
                else float("nan")
            ),
            loop_ms_per_join=(
                totals.loop_run_ms.get(m.name, 0.0) / totals.joined
                if totals.joined > 0
                else float("nan")
            ),
        )
        for m in live
    ]
    ready = []
    for _ in range(args.ready_samples):
        ready.append(await time_to_ready(fleet, leader1))
    level = Level(
        nodes=count,
        window=elapsed,
        managers=loads,
        managers_cpu_pct=sum(lo.cpu_pct for lo in loads),
        busiest_cpu_pct=max(lo.cpu_pct for lo in loads),
        leader=leader1.name,
        leader_changed=leader0 is not leader1,
        client_cpu_pct=100.0 * (self1 - self0) / elapsed,
        manager_core_busy_pct=busy_pct(core0, core1),
        beats_per_s=stats.ok / elapsed,
        sent=stats.sent,
        ok=stats.ok,
        failed=stats.failed,
        failed_over=stats.failed_over,
        errors=dict(stats.errors),
        rtt_p50_ms=1000 * percentile(stats.rtts, 0.5),
        rtt_p99_ms=1000 * percentile(stats.rtts, 0.99),
        join_rate=join_rate,
        tls_join_per_join=tls_per_join[0] / tls_per_join[2] if tls_per_join else float("nan"),
        tls_mutual_per_join=tls_per_join[1] / tls_per_join[2] if tls_per_join else float("nan"),
        ready=ready,
    )
    level.elections = max(0, await raft_term(cluster) - term0)
    level.join_retries, fleet.join_retries = fleet.join_retries, {}
    if fleet.services:
        level.tasks_running, level.tasks_total = await service_tasks(leader1, len(fleet.nodes))
        level.watch_errors, fleet.watch_errors = fleet.watch_errors, {}
    cpus = ", ".join(
        f"{lo.name}{'*' if lo.leader else ''} {lo.cpu_pct:.1f}% "
        f"(forked children {lo.forked_pct:.1f}%, {lo.raft_entries} raft entries; "
        f"stall {lo.stall_ms:.0f} ms, {lo.stall_cpu_ms:.0f} ms of it on CPU)"
        for lo in loads
    )
    follower = level.ready_median("follower_s")
    log(
        f"  {count} nodes: CPU {cpus} (* leader), {level.beats_per_s:.1f} beats/s, "
        f"{level.failed} failed, Ready after {level.ready_median('leader_s'):.2f} s (leader)"
        + ("" if math.isnan(follower) else f" / {follower:.2f} s (follower)")
        + f", {level.elections} election(s)"
        + (f", {level.tasks_running}/{level.tasks_total} tasks running" if fleet.services else "")
    )
    return level


async def measure_failover(cluster: Cluster, fleet: Fleet) -> Failover:
    """Stop one follower; every beat must still be answered, every node stay Ready."""
    leader = await cluster.leader()
    victim = next(m for m in reversed(cluster.live()) if m is not leader)
    log(f"failover: stopping {victim.name} ({victim.api_addr}, a follower) ...")
    fleet.stats = BeatStats()
    began = time.monotonic()
    cluster.stop(victim)
    await asyncio.sleep(1.5 * fleet.period + 1.0)  # every node beats at least once
    stats = fleet.stats
    fleet.stats = BeatStats()
    elapsed = time.monotonic() - began
    cluster.check_alive()
    ids = {n.node_id for n in fleet.nodes}
    reply = await leader.call("node_ls")
    ready = sum(
        1
        for v in reply.get("nodes", [])
        if view_get(v, "ID") in ids and str(view_get(v, "Status")).lower() == "ready"
    )
    by_name = {
        (m.name if (m := cluster.by_addr(split_addr(a)[0])) else a): c
        for a, c in stats.by_manager.items()
    }
    result = Failover(
        stopped=victim.name,
        nodes=len(fleet.nodes),
        window=elapsed,
        sent=stats.sent,
        ok=stats.ok,
        failed=stats.failed,
        failed_over=stats.failed_over,
        errors=dict(stats.errors),
        rtt_p99_ms=1000 * percentile(stats.rtts, 0.99),
        by_manager=by_name,
        ready_nodes=ready,
    )
    log(
        f"  failover: {result.ok} beats answered ({result.failed_over} by the next manager), "
        f"{result.failed} failed; {ready} of {len(ids)} nodes Ready on the leader"
    )
    return result


async def run(args: argparse.Namespace, cluster: Cluster) -> tuple[list[Level], Failover | None]:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # unwinds like Ctrl-C
    began = time.monotonic()
    await cluster.start()
    leader = await cluster.leader()
    log(
        f"{len(cluster.managers)} manager(s) up in {time.monotonic() - began:.1f} s; "
        f"leader {leader.name}"
    )
    if args.leader_alone and args.manager_core is not None and args.client_core is not None:
        for m in cluster.live():
            core = args.manager_core if m is leader else args.client_core
            moved = move_to_core(m.pid, core)
            log(f"  --leader-alone: {m.name} ({moved} threads) on CPU {core}")
    first = cluster.first
    token = (await first.call("join_token", {"role": "worker", "rotate": False}))["token"]
    info = await first.call("info")
    bundle = await fetch_ca_bundle(first.host, first.port, timeout=10)
    check_ca_bundle(bundle, parse_token(token))
    fleet = Fleet(cluster, token, bundle, str(info["cluster_id"]), args)
    if args.services:  # one task per worker: the managers' own agents would run real ones
        spec = {
            "name": SERVICE,
            "mode": "global",
            "command": ["sleep", "infinity"],
            "constraints": ["node.role==worker"],
        }
        await first.call("service_create", {"spec": spec})
        log(f"global service {SERVICE} created (a task per simulated node)")
    levels: list[Level] = []
    failover: Failover | None = None
    try:
        for count in args.nodes:
            levels.append(await measure_level(args, cluster, fleet, count))
        if args.failover and len(cluster.managers) >= 3 and fleet.nodes:
            failover = await measure_failover(cluster, fleet)
    except asyncio.CancelledError:
        # Interrupted: the calls cut short as their connections close are no news.
        loop.set_exception_handler(lambda _loop, _context: None)
        raise
    finally:
        await fleet.close()
    return levels, failover


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        default="0,100,500,1000",
        help="fleet sizes, comma-separated (0: the idle managers, the baseline)",
    )
    parser.add_argument("--managers", type=int, default=3, help="managers (default 3)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of CPU measurement")
    parser.add_argument("--period", type=float, default=5.0, help="heartbeat period in seconds")
    parser.add_argument("--ready-samples", type=int, default=3, help="new nodes timed per size")
    parser.add_argument("--join-concurrency", type=int, default=16)
    parser.add_argument(
        "--join-rate",
        type=float,
        default=0.0,
        help="joins started per second during the growth (still at most --join-concurrency "
        "at once); 0 (default): as fast as the managers answer. A fixed rate compares two "
        "builds at the same load instead of letting the cheaper one go faster",
    )
    parser.add_argument(
        "--connect-per-loop",
        action="store_true",
        help="the simulated nodes connect as agents did before the shared connect: each of a "
        "node's loops (beats, tasks_watch) that finds no connection makes its own and closes "
        "it again if another got there first (the A of an A/B; a handshake each on a manager)",
    )
    parser.add_argument(
        "--no-failover",
        dest="failover",
        action="store_false",
        help="skip stopping a follower at the end (done with 3 or more managers)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="also run a global service (one task per simulated node) that the nodes watch "
        "and report running, as agents do",
    )
    parser.add_argument(
        "--store",
        choices=("raft", "etcd"),
        default="raft",
        help="the managers' replicated log: the embedded raft, or an etcd this bench starts",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 and 30 nodes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--manager-core", type=int, default=None, help="CPU for all managers (default: the first)"
    )
    parser.add_argument(
        "--client-core",
        type=int,
        default=None,
        help="CPU for this process, the simulated nodes (default: the second)",
    )
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument(
        "--manager-nice",
        type=int,
        default=0,
        help="the managers' niceness (e.g. -10: before the host's other work; tells stalls "
        "the host causes from ours)",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="this process's niceness (the simulated nodes; also its session's autogroup): "
        "a starved client makes late beats and failed joins of its own",
    )
    parser.add_argument(
        "--probe-every",
        type=float,
        default=10.0,
        help="seconds between the growth monitor's lines (stalls, run/wait per manager)",
    )
    parser.add_argument(
        "--profile-leader",
        metavar="FILE",
        default="",
        help="py-spy record (raw stacks) of the leader during the last size's growth",
    )
    parser.add_argument(
        "--leader-alone",
        action="store_true",
        help="placement: once the managers are up, the leader alone on the managers' CPU and "
        "the other managers on the simulated nodes' CPU (default: all managers share one CPU; "
        "the figures quoted in the README are of the default)",
    )
    parser.add_argument(
        "--profile-window",
        metavar="PREFIX",
        default="",
        help="py-spy record (raw stacks) of every manager during the last size's window, "
        "to PREFIX.NAME (the leader's ends in -leader); the profiler's CPU falls on the "
        "client's core, but sampling adds to the managers' figures: not for the README",
    )
    parser.add_argument(
        "--check-goals", action="store_true", help="exit 3 when the 1,000-node goal is missed"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="fail when the run takes longer than this many seconds (--quick: 90)",
    )
    parser.add_argument(
        "--meshkit-cmd",
        default=f"{sys.executable} -m meshkit",
        help="how to run meshkit (default: this Python with -m meshkit)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes = "0,10,30"
        args.window = 2.0
        args.period = 1.0
        args.ready_samples = 1
        if args.deadline is None:
            args.deadline = 90.0
    try:
        args.nodes = sorted({int(n) for n in str(args.nodes).split(",") if n.strip()})
    except ValueError:
        parser.error(f"--nodes: expected numbers separated by commas, got {args.nodes!r}")
    if not args.nodes or args.nodes[0] < 0 or args.nodes[-1] < 1:
        parser.error("--nodes: sizes of 0 or more, at least one of 1 or more")
    if args.window <= 0 or args.period <= 0 or args.ready_samples < 1:
        parser.error("--window and --period must be positive, --ready-samples at least 1")
    if not 1 <= args.managers <= 254:
        parser.error("--managers: 1 to 254 (one per address 127.0.0.N)")
    if args.client_nice:
        pin(None, args.client_nice)()
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin:
        args.manager_core = args.client_core = None
    else:
        if args.manager_core is None:
            args.manager_core = cpus[0]
        if args.client_core is None:
            args.client_core = cpus[1] if len(cpus) > 1 else cpus[0]
        for name in ("manager_core", "client_core"):
            if getattr(args, name) not in cpus:
                parser.error(f"--{name.replace('_', '-')}: usable CPUs are {cpus}")
        if args.manager_core == args.client_core:
            log(f"warning: managers and simulated nodes share CPU {args.manager_core}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/stat").exists():
        log("this benchmark reads /proc/<pid>/stat: Linux only")
        return 2
    raise_fd_limit(2 * max(args.nodes) + 1024)
    if args.client_core is not None:
        os.sched_setaffinity(0, {args.client_core})
    tmp = Path(tempfile.mkdtemp(prefix="meshkit-bench-hb-"))
    etcd = None
    args.store_url = ""
    if args.store == "etcd":
        from etcd_server import EtcdServer

        etcd = EtcdServer(tmp)
        etcd.start()
        args.store_url = etcd.url
        log(f"etcd pid {etcd.proc.pid if etcd.proc else '?'} at {etcd.client}")
    cluster = Cluster(tmp, args)
    try:
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:

            async def guarded() -> tuple[list[Level], Failover | None]:
                if args.deadline is None:
                    return await run(args, cluster)
                try:
                    return await asyncio.wait_for(run(args, cluster), args.deadline)
                except asyncio.TimeoutError:
                    raise BenchError(
                        f"the run took longer than {args.deadline:g} s (--deadline)"
                    ) from None

            levels, failover = runner.run(guarded())
        met = print_report(levels, failover, cluster, args)
        if args.json:
            write_json(Path(args.json), levels, failover, cluster, args, met)
        problems = []
        failed = sum(lv.failed for lv in levels)
        if failed:
            problems.append(f"{failed} heartbeats failed")
        if failover is not None:
            if failover.failed:
                problems.append(f"{failover.failed} heartbeats failed after a follower stopped")
            if failover.ready_nodes != failover.nodes:
                problems.append(
                    f"after a follower stopped only {failover.ready_nodes} of "
                    f"{failover.nodes} nodes were Ready"
                )
        if problems:
            log("error: " + "; ".join(problems))
            return 1
        if args.check_goals and met is False:
            return 3
        return 0
    except (BenchError, RpcError) as exc:
        log(f"error: {exc}")
        if logs := cluster.logs():
            log(logs)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    finally:
        cluster.stop_all()
        if etcd is not None:
            log(f"etcd used {etcd.cpu_seconds():.1f} s of CPU in all")
            etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
