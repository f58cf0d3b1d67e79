#!/usr/bin/env python3
"""Chaos on three managers: SIGKILL of the leader (several times) and a partition of the
leader while two clients write; no acknowledged write may be lost or applied twice.

Three real managers, each its own process with its own data dir and socket in a temporary
directory, started the way ``bench/cluster_heartbeats.py`` starts them (``meshkit node init``
then ``meshkit node join --token <manager token>``, its ``Manager`` class), each on a namespace
host of its own (tests/support/netns.py: three namespaces on one bridge, 198.18.0.10-12), so
that a partition is a pulled cable that touches no other process's traffic.

Two clients (coroutines in this process) write continuously, each through the local socket
of one manager, moving to the next manager when theirs fails; before each fault client 1 is
put on the manager the fault hits and client 2 on another. A write is ``service_create`` of
a service with no replicas (nothing runs) labelled with its logical id ``chaos.op=cN-SEQ``
and carrying one request id for all its attempts. Each attempt uses a new name
(``chaos-cN-SEQ-aATTEMPT``), so name uniqueness cannot hide a duplicate: only the request id
stops a retried write from being applied twice. A write is retried (same request id) until it
is acknowledged; a reply with the service id is an acknowledgement, noted with its time.

Faults, one after another, each followed by a dwell with writes going on:

1. ``kill``: SIGKILL of the current raft leader; a second later it is restarted from its data
   dir (``meshkit node run``) and the run waits until all three agree on one leader again;
2. ``partition``: the leader's host is cut off (its veth on the bridge goes down: nothing
   reaches it or leaves it) for a few seconds, then plugged back in.

At the end every manager is asked for the services (``service_ls``) and they must agree. The
figures: writes acknowledged, lost (acknowledged, missing from the state), duplicated (one
logical write present more than once), unknown outcome (still unacknowledged at the end: shown
with whether they landed), and per fault the longest stretch without an acknowledged write
from the fault on (to the next fault), with their median and maximum. The goals (issue 20):
0 lost, 0 duplicates, longest stretch after a fault <= 3 s.

    python bench/cluster_chaos.py                 # 4 kills and a partition, about 2 minutes
    python bench/cluster_chaos.py --quick         # smoke test: one kill, no partition
    python bench/cluster_chaos.py --kills 6 --partition-seconds 8 --json out.json

Needs root (network namespaces). Everything started here is stopped by pid and the
namespaces are deleted when the run ends (also on Ctrl-C and failures); the temporary
directory is removed. Exit status: 0 when the run completed with no
lost and no duplicated write, 1 with a message otherwise, 3 with --check-goals when the
stretch goal was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "tests"):  # cluster_heartbeats; tests/support (netns)
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
import cluster_heartbeats as hb  # noqa: E402  (its managers, helpers, and the src path)
from cluster_bench_util import median  # noqa: E402
from meshkit.cluster.rpc.transport import RpcClient, RpcError  # noqa: E402

API_PORT = 2377
RAFT_PORT = 2378
GOAL_GAP_S = 3.0
CALL_TIMEOUT = 10.0  # past the managers' commit deadline: their own answer comes first
log = hb.log
BenchError = hb.BenchError


# --------------------------------------------------------------------------- the managers


class ChaosManager(hb.Manager):
    """A bench manager on its own namespace host; SIGKILLed and restarted from its data dir."""

    def __init__(self, index: int, tmp: Path, host: Any) -> None:
        self.index = index
        self.name = f"m{index + 1}"
        self.netns = str(host.netns)
        self.lab_host = str(host.name)
        self.host = str(host.address)
        self.port = API_PORT  # each host has its own ports: fixed numbers cannot collide
        self.raft_port = RAFT_PORT
        self.socket = str(tmp / f"{self.name}.sock")
        self.data_dir = tmp / self.name
        self.logfile = tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []
        self.stopped = False

    def start(self, args: argparse.Namespace, join: tuple[str, str] | None) -> None:
        """cluster_heartbeats' start, run on this manager's host (``ip netns exec`` execs
        meshkit, so the pid is meshkit's)."""
        inside = f"ip netns exec {self.netns} {args.meshkit_cmd}"
        super().start(argparse.Namespace(**{**vars(args), "meshkit_cmd": inside}), join)

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all, the way a crash or an OOM kill ends it."""
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, args: argparse.Namespace) -> None:
        """``meshkit node run`` on the data dir it had (after a reboot, in Docker's words)."""
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{hb.SRC_DIR}{os.pathsep}{old}" if old else str(hb.SRC_DIR)
        self.cmd = [
            *f"ip netns exec {self.netns} {args.meshkit_cmd}".split(),
            *("node", "run", "--data-dir", str(self.data_dir), "--host", self.socket),
            *("--log-level", "warning"),
        ]
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.stopped = False
        log(f"{self.name} restarted, pid {self.pid}: {' '.join(self.cmd)}")


class ChaosCluster(hb.Cluster):
    """Three managers on three namespace hosts of one bridge (tests/support/netns.py)."""

    def __init__(self, tmp: Path, args: argparse.Namespace, lab: Any) -> None:
        self.args = args
        self.lab = lab
        hosts = lab.add_hosts(3, stem="m")
        self.managers: list[hb.Manager] = [ChaosManager(i, tmp, h) for i, h in enumerate(hosts)]

    def cut(self, m: hb.Manager) -> None:
        """Pull the cable of a manager's host: nothing reaches it or leaves it."""
        assert isinstance(m, ChaosManager)
        self.lab.disconnect(m.lab_host)

    def heal(self, m: hb.Manager) -> None:
        assert isinstance(m, ChaosManager)
        self.lab.reconnect(m.lab_host)

    async def wait_agreed(self, timeout: float) -> hb.Manager:
        """Until every manager runs, has quorum and names the same leader; that leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                statuses = [await m.call("cluster_status") for m in self.managers]
                leaders = {str(st.get("leader")) for st in statuses}
                says = [
                    m for m, st in zip(self.managers, statuses, strict=True) if st.get("is_leader")
                ]
                quorum = all(st.get("has_quorum") for st in statuses)
                if quorum and len(leaders) == 1 and len(says) == 1:
                    return says[0]
                last = f"leaders named: {sorted(leaders)}, {len(says)} say they lead"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
        raise BenchError(f"the managers did not agree on a leader within {timeout:g} s ({last})")


# --------------------------------------------------------------------------- the clients


@dataclass
class Write:
    client: int
    seq: int
    request_id: str
    started: float
    acked_at: float | None = None
    service_id: str = ""
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        return f"c{self.client}-{self.seq}"


@dataclass
class Failure:
    sent: float
    ended: float
    client: int
    manager: str
    code: str
    text: str


class Writer:
    """One client: writes one after another, each retried with its request id until acked."""

    def __init__(self, client: int, cluster: ChaosCluster, interval: float) -> None:
        self.client = client
        self.cluster = cluster
        self.interval = interval
        self.index = client - 1  # the manager it starts with
        self.writes: list[Write] = []
        self.failures: list[Failure] = []  # every failed attempt, for the fault timelines
        self.stop = False

    def manager(self) -> hb.Manager:
        return self.cluster.managers[self.index % len(self.cluster.managers)]

    async def _attempt(self, w: Write) -> str:
        m = self.manager()
        w.attempts += 1
        spec = {
            "name": f"chaos-{w.op}-a{w.attempts}",
            "command": ["sleep", "infinity"],
            "replicas": 0,
            "labels": {"chaos.op": w.op},
        }
        params = {"spec": spec, "request_id": w.request_id}
        client = await RpcClient.connect_unix(m.socket, timeout=2)
        try:
            reply = await client.call("service_create", params, timeout=CALL_TIMEOUT)
        finally:
            await client.close()
        return str(reply["id"])

    async def run(self) -> None:
        seq = 0
        while not self.stop:
            seq += 1
            w = Write(self.client, seq, secrets.token_hex(16), time.monotonic())
            self.writes.append(w)
            while not self.stop:
                sent = time.monotonic()
                try:
                    w.service_id = await self._attempt(w)
                    w.acked_at = time.monotonic()
                    break
                except (RpcError, OSError, asyncio.TimeoutError) as exc:
                    code = getattr(exc, "code", type(exc).__name__)
                    w.errors.append(f"{code}: {exc}"[:200])
                    self.failures.append(
                        Failure(
                            sent,
                            time.monotonic(),
                            self.client,
                            self.manager().name,
                            code,
                            str(exc)[:120],
                        )
                    )
                    self.index += 1  # the next manager: theirs may be dead or cut off
                    await asyncio.sleep(0.05)
            await asyncio.sleep(self.interval)


# --------------------------------------------------------------------------- the run


@dataclass
class Fault:
    kind: str  # kill or partition
    target: str
    at: float
    healed_at: float = 0.0
    until: float = 0.0  # the next fault (or the end of the writes)
    gap_s: float = float("nan")
    client_gap_s: float = float("nan")  # client 1's (through the manager hit) longest stretch
    acks_in_window: int = 0
    failures: list[str] = field(default_factory=list)  # failed attempts in the window, timed


@dataclass
class Outcome:
    acked: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    unknown_applied: int = 0
    strays: list[str] = field(default_factory=list)  # in the state with no write of ours
    services_seen: int = 0
    managers_agree: bool = True
    disagreement: list[str] = field(default_factory=list)
    retried: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    baseline_gap_s: float = float("nan")
    faults: list[Fault] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def longest_gap(start: float, end: float, acks: Sequence[float]) -> float:
    """The longest stretch in [start, end] with no acknowledgement, counted from start."""
    points = [start, *sorted(t for t in acks if start <= t <= end)]
    if len(points) == 1:
        return end - start
    return max(b - a for a, b in itertools.pairwise(points))


def place(writers: Sequence[Writer], cluster: ChaosCluster, target: hb.Manager) -> None:
    """Client 1 on the manager the fault hits, client 2 on another: each fault is seen both
    from the manager it hits and from a survivor (the gap goal is the cluster's: any client)."""
    at = cluster.managers.index(target)
    writers[0].index = at
    writers[1].index = (at + 1) % len(cluster.managers)


async def kill_leader(
    cluster: ChaosCluster, args: argparse.Namespace, faults: list[Fault], writers: list[Writer]
) -> None:
    leader = await cluster.wait_agreed(60)
    place(writers, cluster, leader)
    await asyncio.sleep(0.3)  # writes under way through both
    assert isinstance(leader, ChaosManager)
    log(f"fault {len(faults) + 1}: SIGKILL of the leader {leader.name} (pid {leader.pid})")
    faults.append(Fault("kill", leader.name, time.monotonic()))
    leader.kill()
    await asyncio.sleep(args.down_seconds)
    leader.restart(args)
    faults[-1].healed_at = time.monotonic()
    await leader.wait_up(60)
    await cluster.wait_agreed(60)
    await asyncio.sleep(args.dwell)


async def partition_leader(
    cluster: ChaosCluster, args: argparse.Namespace, faults: list[Fault], writers: list[Writer]
) -> None:
    leader = await cluster.wait_agreed(60)
    place(writers, cluster, leader)
    await asyncio.sleep(0.3)
    log(
        f"fault {len(faults) + 1}: partition of the leader {leader.name} for "
        f"{args.partition_seconds:g} s"
    )
    faults.append(Fault("partition", leader.name, time.monotonic()))
    cluster.cut(leader)
    await asyncio.sleep(args.partition_seconds)
    cluster.heal(leader)
    faults[-1].healed_at = time.monotonic()
    log("  healed")
    await cluster.wait_agreed(60)
    await asyncio.sleep(args.dwell)


async def read_state(cluster: ChaosCluster) -> tuple[list[dict[str, Any]], list[str]]:
    """service_ls from the leader and from every other manager: the leader's list, and how
    the others differ from it (nothing when all agree; a restarted follower gets 30 s to
    apply the log)."""
    leader = await cluster.wait_agreed(60)
    deadline = time.monotonic() + 30
    while True:
        services = (await leader.call("service_ls"))["services"]
        want = {str(v["Name"]) for v in services}
        diffs = []
        for m in cluster.managers:
            have = {str(v["Name"]) for v in (await m.call("service_ls"))["services"]}
            if have != want:
                st = await m.call("cluster_status")
                diffs.append(
                    f"{m.name} has {len(have)} services, the leader {leader.name} {len(want)}: "
                    f"{len(want - have)} missing {sorted(want - have)[:3]}, {len(have - want)} "
                    f"more {sorted(have - want)[:3]}; its raft commit index "
                    f"{st.get('commit_index')}, applied {st.get('last_applied')}, term "
                    f"{st.get('term')}"
                )
        if not diffs or time.monotonic() > deadline:
            return services, diffs
        await asyncio.sleep(0.5)


def tally(writers: Sequence[Writer], services: list[dict[str, Any]]) -> Outcome:
    out = Outcome(services_seen=len(services))
    by_op: dict[str, int] = {}
    for view in services:
        labels = view.get("Labels") or view.get("labels") or {}
        op = labels.get("chaos.op") if isinstance(labels, dict) else None
        if op is None:
            out.strays.append(str(view.get("Name")))
        else:
            by_op[op] = by_op.get(op, 0) + 1
    for writer in writers:
        for w in writer.writes:
            present = by_op.get(w.op, 0)
            if w.attempts > 1:
                out.retried += 1
            for err in w.errors:
                code = err.split(":", 1)[0]
                out.error_codes[code] = out.error_codes.get(code, 0) + 1
            if w.acked_at is not None:
                out.acked += 1
                if present == 0:
                    out.lost.append(w.op)
            elif w.attempts:
                out.unknown += 1
                out.unknown_applied += present > 0
            if present > 1:
                out.duplicates[w.op] = present
    known = {w.op for writer in writers for w in writer.writes}
    out.strays += [op for op in by_op if op not in known]
    return out


def service_labels_present(services: list[dict[str, Any]]) -> bool:
    return any("Labels" in v or "labels" in v for v in services)


async def run(args: argparse.Namespace, cluster: ChaosCluster) -> Outcome:
    began = time.monotonic()
    await cluster.start()
    await cluster.wait_agreed(60)
    log(f"3 managers up in {time.monotonic() - began:.1f} s")
    load_before = os.getloadavg()
    writers = [Writer(c, cluster, args.interval) for c in (1, 2)]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    faults: list[Fault] = []
    try:
        warm_start = time.monotonic()
        await asyncio.sleep(args.warmup)
        warm_end = time.monotonic()
        for _ in range(args.kills):
            await kill_leader(cluster, args, faults, writers)
        if args.partition:
            await partition_leader(cluster, args, faults, writers)
    finally:
        for w in writers:
            w.stop = True
        ended = time.monotonic()
        # Each client finishes the write it is on (or gives it up at CALL_TIMEOUT).
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT + 5)
        for t in tasks:
            t.cancel()
    services, diffs = await read_state(cluster)
    if services and not service_labels_present(services):
        # service_ls views without labels: ask each service's record instead
        for view in services:
            rec = await cluster.managers[0].call("service_inspect", {"service": view["ID"]})
            view["Labels"] = (rec.get("spec") or {}).get("labels") or {}
    out = tally(writers, services)
    out.managers_agree = not diffs
    out.disagreement = diffs
    out.load_before = load_before
    out.load_after = os.getloadavg()
    acks = [w.acked_at for wr in writers for w in wr.writes if w.acked_at is not None]
    out.baseline_gap_s = longest_gap(warm_start + 1.0, warm_end, acks)
    for i, f in enumerate(faults):
        f.until = faults[i + 1].at if i + 1 < len(faults) else ended
        f.gap_s = longest_gap(f.at, f.until, acks)
        own = [w.acked_at for w in writers[0].writes if w.acked_at is not None]
        f.client_gap_s = longest_gap(f.at, f.until, own)
        f.acks_in_window = sum(1 for t in acks if f.at <= t <= f.until)
        f.failures = [
            f"sent +{x.sent - f.at:.2f}s failed +{x.ended - f.at:.2f}s: client {x.client} "
            f"via {x.manager}: {x.code}: {x.text}"
            for wr in writers
            for x in wr.failures
            if f.at - CALL_TIMEOUT <= x.sent < f.until and f.at <= x.ended
        ]
    out.faults = faults
    return out


# --------------------------------------------------------------------------- the report


def verdicts(out: Outcome) -> list[tuple[str, bool]]:
    worst = max((f.gap_s for f in out.faults), default=float("nan"))
    return [
        ("0 acknowledged writes lost", not out.lost),
        ("0 duplicated writes", not out.duplicates),
        (f"longest stretch without a write after a fault <= {GOAL_GAP_S:g} s", worst <= GOAL_GAP_S),
    ]


def print_report(out: Outcome) -> None:
    gaps = [f.gap_s for f in out.faults]
    print()
    print(
        f"{'fault':<4} {'kind':<10} {'target':<7} {'healed':>8} {'acks':>6} {'longest gap':>12}"
        f" {'on the hit manager':>19}"
    )
    for i, f in enumerate(out.faults, 1):
        healed = f"+{f.healed_at - f.at:.1f}s" if f.healed_at else "-"
        print(
            f"{i:<5} {f.kind:<10} {f.target:<7} {healed:>8} {f.acks_in_window:>6} "
            f"{f.gap_s:>11.2f}s {f.client_gap_s:>18.2f}s"
        )
    for i, f in enumerate(out.faults, 1):
        for line in sorted(f.failures)[:8]:
            print(f"  fault {i}: {line}")
    print()
    print(f"writes acknowledged        {out.acked}")
    lost = f"  {out.lost[:10]}" if out.lost else ""
    print(f"lost (acked, not in state) {len(out.lost)}{lost}")
    dups = sorted(out.duplicates.items())[:10]
    print(f"duplicated                 {len(out.duplicates)}" + (f"  {dups}" if dups else ""))
    print(
        f"unknown outcome            {out.unknown} (unacknowledged at the end; "
        f"{out.unknown_applied} of them applied)"
    )
    print(f"writes that needed a retry {out.retried}  errors seen: {out.error_codes}")
    print(
        f"services in the state      {out.services_seen} (strays: {len(out.strays)}); "
        f"managers agree: {'yes' if out.managers_agree else 'NO'}"
    )
    for line in out.disagreement:
        print(f"  {line}")
    print(f"longest gap, no fault      {out.baseline_gap_s:.2f}s (the warm-up)")
    if gaps:
        print(f"longest gap after a fault  median {median(gaps):.2f}s, max {max(gaps):.2f}s")
        worst = [f.client_gap_s for f in out.faults]
        print(
            f"  client on the hit manager median {median(worst):.2f}s, max {max(worst):.2f}s "
            "(it waits for its manager to fail the write, then moves on)"
        )
    print(
        "load average               "
        f"{' '.join(f'{x:.2f}' for x in out.load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in out.load_after)} after "
        f"({os.cpu_count()} CPUs, shared)"
    )
    print()
    for text, ok in verdicts(out):
        print(f"goal: {text}: {'met' if ok else 'MISSED'}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs of the leader (default 4)")
    parser.add_argument(
        "--no-partition", dest="partition", action="store_false", help="skip the partition"
    )
    parser.add_argument("--partition-seconds", type=float, default=6.0)
    parser.add_argument(
        "--down-seconds",
        type=float,
        default=1.0,
        help="how long a killed leader stays down before its restart",
    )
    parser.add_argument("--dwell", type=float, default=8.0, help="seconds of writes after a fault")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of writes before")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="pause of each client between writes (s)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: one kill, no partition")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--keep-logs",
        metavar="DIR",
        default="",
        help="copy the managers' logs here at the end (their elections, with why)",
    )
    parser.add_argument(
        "--check-goals", action="store_true", help="exit 3 when the stretch goal is missed"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="fail when the run takes longer than this (--quick: 90)",
    )
    parser.add_argument(
        "--meshkit-cmd",
        default=f"{sys.executable} -m meshkit",
        help="how to run meshkit (default: this Python with -m meshkit)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.kills = 1
        args.partition = False
        args.dwell = 3.0
        args.warmup = 2.0
        if args.deadline is None:
            args.deadline = 90.0
    if args.kills < 0:
        parser.error("--kills: 0 or more")
    if args.kills == 0 and not args.partition:
        parser.error("--kills 0 with --no-partition leaves no fault to measure")
    for name in ("partition_seconds", "down_seconds", "dwell", "warmup", "interval"):
        if getattr(args, name) < 0 or (name == "warmup" and args.warmup < 2):
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag}: {'at least 2' if name == 'warmup' else '0 or more'} seconds")
    # what cluster_heartbeats' Manager.start reads
    args.period = 5.0
    args.manager_core = None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from support import netns  # type: ignore[import-not-found]

    if reason := netns.available():
        log(f"this benchmark runs its managers on namespace hosts: {reason}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="meshkit-bench-chaos-"))
    lab = netns.NetnsLab()
    cluster = ChaosCluster(tmp, args, lab)
    try:
        with asyncio.Runner() as runner:
            loop = runner.get_loop()
            main_task: list[asyncio.Task[Any]] = []

            async def guarded() -> Outcome:
                task = asyncio.current_task()
                assert task is not None
                main_task.append(task)
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signal.SIGTERM, task.cancel)
                if args.deadline is None:
                    return await run(args, cluster)
                try:
                    return await asyncio.wait_for(run(args, cluster), args.deadline)
                except asyncio.TimeoutError:
                    raise BenchError(f"the run took longer than {args.deadline:g} s") from None

            out = runner.run(guarded())
        print_report(out)
        if args.json:
            Path(args.json).write_text(json.dumps(asdict(out), indent=2, allow_nan=True) + "\n")
        problems = []
        if out.lost:
            problems.append(f"{len(out.lost)} acknowledged writes lost")
        if out.duplicates:
            problems.append(f"{len(out.duplicates)} writes applied more than once")
        if not out.managers_agree:
            problems.append("the managers' service lists differ at the end")
        if problems:
            log("error: " + "; ".join(problems))
            return 1
        if args.check_goals and not all(ok for _, ok in verdicts(out)):
            return 3
        return 0
    except (BenchError, RpcError, netns.NetnsError) as exc:
        log(f"error: {exc}")
        if logs := cluster.logs():
            log(logs)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    finally:
        cluster.stop_all()
        lab.close()  # the namespaces, their links, anything left in them
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            for f in Path(tmp).glob("*.log"):
                shutil.copy(f, Path(args.keep_logs) / f.name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
