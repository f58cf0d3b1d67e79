#!/usr/bin/env python3
"""Heartbeat load on one manager: how much CPU 100, 500 and 1,000 nodes cost it.

One real manager (``meshkit node init``, its own process, on 127.0.0.1 free ports, data dir
and socket in a temporary directory) and simulated worker nodes in this process: each one
joins for real (``join`` with the worker token and a CSR, over TLS to the manager's API
port), gets its own certificate, and then holds one mutual-TLS connection on which it calls
``heartbeat {"node_id": ...}`` every period (the manager's ``--dispatcher-heartbeat``,
default 5 s, re-read from every reply), with phases spread evenly at random. The nodes are
lightweight: no agent, no raft, just ``meshkit.cluster.rpc.RpcClient`` on one uvloop loop.

For each fleet size (grown in place: none (the idle baseline), 100, then 400 more, then 500
more):

1. warm-up of one period plus a second, so every node is beating at steady state;
2. the manager process's CPU share over a window: utime + stime from /proc/<pid>/stat at
   both ends, divided by the window (100 % = one core busy);
3. heartbeats sent, failed, and their round-trip time (median and p99);
4. the time for a new node to show Ready in ``node ls``: a node joins (timed), starts
   beating at once, and ``node_ls`` on the manager's socket is polled every 50 ms until it
   lists the node as Ready (several samples; the median is shown).

The simulated nodes' own CPU (this process) is shown too: when it nears 100 % of a core,
the clients, not the manager, limit the rate.

    python bench/cluster_heartbeats.py                   # 0 (idle), 100, 500, 1000 nodes, 30 s
    python bench/cluster_heartbeats.py --quick           # smoke test: 0, 10, 30 nodes, 1 s beats
    python bench/cluster_heartbeats.py --nodes 100,2000 --window 60 --json out.json
    python bench/cluster_heartbeats.py --manager-core 0 --client-core 1

Everything started here is stopped by pid when the run ends; the temporary directory is
removed. Exit status: 0 when every step ran, 1 with a message when one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

try:
    import meshkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(SRC_DIR))

from meshkit.cluster.pki import (  # noqa: E402
    NodeIdentity,
    client_ssl_context,
    new_node_key_and_csr,
)
from meshkit.cluster.rpc import (  # noqa: E402
    RpcClient,
    RpcError,
    check_ca_bundle,
    fetch_ca_bundle,
)
from meshkit.cluster.tokens import parse_token  # noqa: E402


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def raise_fd_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one (the manager inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        log(f"warning: only {want} file descriptors allowed; {needed} wanted")


def pin(core: int | None) -> Any:
    if core is None:
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {core})

    return _pin


# --------------------------------------------------------------------------- the manager


class Manager:
    """``meshkit node init`` in the foreground, in its own session, stopped by pid."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.raft_port = free_port()
        self.socket = str(tmp / "manager.sock")
        self.logfile = tmp / "manager.log"
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{SRC_DIR}{os.pathsep}{old}" if old else str(SRC_DIR)
        cmd = [
            *args.meshkit_cmd.split(),
            "node",
            "init",
            "--advertise-addr",
            HOST,
            "--listen-addr",
            f"{HOST}:{self.port}",
            "--raft-port",
            str(self.raft_port),
            "--data-dir",
            str(tmp / "manager"),
            "--host",
            self.socket,
            "--hostname",
            "bench-manager",
            "--dispatcher-heartbeat",
            f"{args.period:g}s",
            "--log-level",
            "warning",
        ]
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin(args.manager_core),
                env=env,
            )
        self.cmd = cmd

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"the manager exited with status {self.proc.returncode}; its output:\n"
                f"{tail(self.logfile)}"
            )

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One call on the manager's local socket."""
        client = await RpcClient.connect_unix(self.socket, timeout=5)
        try:
            return await client.call(method, params or {}, timeout=30)
        finally:
            await client.close()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the agent answers ``info`` as an initialised manager."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                info = await self.call("info")
                if info.get("initialized", True) and info.get("role") == "manager":
                    return
                last = f"info said {info}"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
        raise BenchError(
            f"the manager did not come up within {timeout:.0f} s ({last}); its output:\n"
            f"{tail(self.logfile)}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------- simulated nodes


@dataclass
class BeatStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    rtts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.sent = self.ok = self.failed = 0
        self.rtts = []
        self.errors = {}


@dataclass
class SimNode:
    index: int
    node_id: str
    identity: NodeIdentity
    client: RpcClient | None = None
    task: asyncio.Task[None] | None = None


class Fleet:
    """Simulated worker nodes: join, then heartbeat on one mTLS connection each."""

    def __init__(self, manager: Manager, token: str, bundle: bytes, args: argparse.Namespace):
        self.manager = manager
        self.token = token
        self.bundle = bundle
        self.period = args.period
        self.join_concurrency = args.join_concurrency
        self.nodes: list[SimNode] = []
        self.stats = BeatStats()
        self.rng = random.Random(args.seed)
        self._join_ctx = client_ssl_context(None, bundle)

    async def join_one(self, index: int) -> SimNode:
        key_pem, csr_pem = new_node_key_and_csr(f"sim-{index:05d}")
        client = await RpcClient.connect_tcp(
            HOST, self.manager.port, self._join_ctx, timeout=30, expect_role="manager"
        )
        try:
            reply = await client.call(
                "join",
                {
                    "token": self.token,
                    "csr": csr_pem.decode(),
                    "hostname": f"sim-{index:05d}",
                    "advertise_addr": HOST,
                    "version": "bench",
                },
                timeout=60,
            )
        finally:
            await client.close()
        identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, reply["ca"].encode())
        if identity.role != "worker":
            raise BenchError(f"sim-{index} joined as a {identity.role}, expected a worker")
        return SimNode(index, identity.node_id, identity)

    async def connect(self, node: SimNode) -> None:
        ctx = client_ssl_context(node.identity, self.bundle)
        node.client = await RpcClient.connect_tcp(
            HOST, self.manager.port, ctx, timeout=30, expect_role="manager"
        )

    def start_beating(self, node: SimNode, phase: float) -> None:
        node.task = asyncio.create_task(self._beat_loop(node, phase))

    async def _beat_loop(self, node: SimNode, phase: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(phase)
        due = loop.time()
        while True:
            if node.client is None or node.client.closed:
                with contextlib.suppress(RpcError):
                    await self.connect(node)
            self.stats.sent += 1
            started = time.perf_counter()
            try:
                if node.client is None:
                    raise RpcError("unreachable", "not connected")
                reply = await node.client.call("heartbeat", {"node_id": node.node_id}, timeout=15)
                self.stats.ok += 1
                self.stats.rtts.append(time.perf_counter() - started)
                period = reply.get("period") if isinstance(reply, dict) else None
                if isinstance(period, (int, float)) and period > 0:
                    self.period = float(period)
            except RpcError as exc:
                self.stats.failed += 1
                self.stats.errors[exc.code] = self.stats.errors.get(exc.code, 0) + 1
            due += self.period
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def grow_to(self, count: int) -> float:
        """Join and start nodes until the fleet has ``count``; returns joins per second."""
        missing = count - len(self.nodes)
        if missing <= 0:
            return float("nan")
        gate = asyncio.Semaphore(self.join_concurrency)
        start = len(self.nodes)
        began = time.perf_counter()

        async def one(i: int) -> SimNode:
            async with gate:
                node = await self.join_one(i)
                await self.connect(node)
                return node

        new = await asyncio.gather(*(one(start + i) for i in range(missing)))
        rate = missing / (time.perf_counter() - began)
        for node in new:
            self.nodes.append(node)
            self.start_beating(node, self.rng.uniform(0, self.period))
        return rate

    async def time_to_ready(self) -> tuple[float, float]:
        """(join seconds, join start -> Ready in node ls seconds) for one new node."""
        began = time.perf_counter()
        node = await self.join_one(len(self.nodes))
        joined = time.perf_counter() - began
        await self.connect(node)
        self.nodes.append(node)
        self.start_beating(node, 0.0)
        deadline = began + 4 * self.period + 30
        while time.perf_counter() < deadline:
            reply = await self.manager.call("node_ls")
            for view in reply.get("nodes", []):
                node_id = view.get("ID", view.get("id"))
                status = view.get("Status", view.get("status"))
                if node_id == node.node_id and str(status).lower() == "ready":
                    return joined, time.perf_counter() - began
            await asyncio.sleep(0.05)
        raise BenchError(f"node {node.node_id} did not show Ready in node ls in time")

    async def close(self) -> None:
        tasks = [n.task for n in self.nodes if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(n.client.close() for n in self.nodes if n.client is not None),
            return_exceptions=True,
        )


# --------------------------------------------------------------------------- the run


@dataclass
class Level:
    nodes: int
    window: float
    manager_cpu_pct: float
    client_cpu_pct: float
    beats_per_s: float
    sent: int
    ok: int
    failed: int
    errors: dict[str, int]
    rtt_p50_ms: float
    rtt_p99_ms: float
    join_rate: float
    join_s: list[float]
    ready_s: list[float]


async def measure(args: argparse.Namespace, manager: Manager) -> list[Level]:
    await manager.wait_ready()
    token_reply = await manager.call("join_token", {"role": "worker", "rotate": False})
    token = token_reply["token"]
    bundle = await fetch_ca_bundle(HOST, manager.port, timeout=10)
    check_ca_bundle(bundle, parse_token(token))
    fleet = Fleet(manager, token, bundle, args)
    levels: list[Level] = []
    try:
        for count in args.nodes:
            log(f"growing the fleet to {count} nodes ...")
            join_rate = await fleet.grow_to(count)
            manager.check_alive()
            await asyncio.sleep(fleet.period + 1.0)  # every node beating at steady state
            fleet.stats.reset()
            cpu0, self0, t0 = proc_cpu_seconds(manager.pid), self_cpu_seconds(), time.monotonic()
            await asyncio.sleep(args.window)
            cpu1, self1, t1 = proc_cpu_seconds(manager.pid), self_cpu_seconds(), time.monotonic()
            manager.check_alive()
            stats = fleet.stats
            fleet.stats = BeatStats()  # the new nodes timed below count in no window
            elapsed = t1 - t0
            ready: list[float] = []
            joins: list[float] = []
            for _ in range(args.ready_samples):
                join_s, ready_s = await fleet.time_to_ready()
                joins.append(join_s)
                ready.append(ready_s)
            level = Level(
                nodes=count,
                window=elapsed,
                manager_cpu_pct=100.0 * (cpu1 - cpu0) / elapsed,
                client_cpu_pct=100.0 * (self1 - self0) / elapsed,
                beats_per_s=stats.ok / elapsed,
                sent=stats.sent,
                ok=stats.ok,
                failed=stats.failed,
                errors=dict(stats.errors),
                rtt_p50_ms=1000 * percentile(stats.rtts, 0.5),
                rtt_p99_ms=1000 * percentile(stats.rtts, 0.99),
                join_rate=join_rate,
                join_s=joins,
                ready_s=ready,
            )
            levels.append(level)
            log(
                f"  {count} nodes: manager {level.manager_cpu_pct:.1f} % CPU, "
                f"{level.beats_per_s:.1f} beats/s, {level.failed} failed, "
                f"Ready after {statistics.median(ready):.2f} s"
            )
    finally:
        await fleet.close()
    return levels


def _num(value: float, unit: str) -> str:
    """A figure with one decimal and its unit, or "-" when there is none (NaN)."""
    return "-" if math.isnan(value) else f"{value:.1f}{unit}"


def print_table(levels: list[Level], args: argparse.Namespace) -> None:
    print()
    print(
        f"manager heartbeat load (period {args.period:g} s, window {args.window:g} s, "
        f"{os.cpu_count()} CPUs; 100 % = one core)"
    )
    header = (
        f"{'nodes':>6} {'manager CPU':>12} {'per beat':>9} {'clients CPU':>12} {'beats/s':>8} "
        f"{'failed':>7} {'rtt p50':>8} {'rtt p99':>8} {'joins/s':>8} {'join':>7} {'->Ready':>8}"
    )
    print(header)
    print("-" * len(header))
    idle = next((lv.manager_cpu_pct for lv in levels if lv.nodes == 0), None)
    for lv in levels:
        per_beat = "-"
        if idle is not None and lv.beats_per_s > 0:
            # manager CPU above the idle baseline, per heartbeat served
            per_beat = f"{10_000 * (lv.manager_cpu_pct - idle) / lv.beats_per_s:.0f}us"
        print(
            f"{lv.nodes:>6} {lv.manager_cpu_pct:>11.1f}% {per_beat:>9} {lv.client_cpu_pct:>11.1f}% "
            f"{lv.beats_per_s:>8.1f} {lv.failed:>7} {_num(lv.rtt_p50_ms, 'ms'):>8} "
            f"{_num(lv.rtt_p99_ms, 'ms'):>8} {_num(lv.join_rate, ''):>8} "
            f"{statistics.median(lv.join_s):>6.2f}s {statistics.median(lv.ready_s):>7.2f}s"
        )
    for lv in levels:
        if lv.errors:
            print(f"errors at {lv.nodes} nodes: {lv.errors}")
    print(
        "per beat = manager CPU above the idle (0-node) baseline per heartbeat served; "
        "join = the join call of a new node; ->Ready = from that join's start until node ls "
        "lists it Ready (median of the samples)"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        default="0,100,500,1000",
        help="fleet sizes, comma-separated (0: the idle manager, the baseline)",
    )
    parser.add_argument("--window", type=float, default=30.0, help="seconds of CPU measurement")
    parser.add_argument("--period", type=float, default=5.0, help="heartbeat period in seconds")
    parser.add_argument("--ready-samples", type=int, default=3, help="new nodes timed per size")
    parser.add_argument("--join-concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 and 30 nodes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--manager-core", type=int, default=None, help="pin the manager")
    parser.add_argument("--client-core", type=int, default=None, help="pin the simulated nodes")
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
    try:
        args.nodes = sorted({int(n) for n in str(args.nodes).split(",") if n.strip()})
    except ValueError:
        parser.error(f"--nodes: expected numbers separated by commas, got {args.nodes!r}")
    if not args.nodes or args.nodes[0] < 0 or args.nodes[-1] < 1:
        parser.error("--nodes: sizes of 0 or more, at least one of 1 or more")
    if args.window <= 0 or args.period <= 0 or args.ready_samples < 1:
        parser.error("--window and --period must be positive, --ready-samples at least 1")
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
    manager: Manager | None = None
    try:
        manager = Manager(tmp, args)
        log(f"manager pid {manager.pid} on {HOST}:{manager.port}: {' '.join(manager.cmd)}")
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            levels = runner.run(measure(args, manager))
        print_table(levels, args)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "period": args.period,
                        "window": args.window,
                        "cpus": os.cpu_count(),
                        "levels": [asdict(lv) for lv in levels],
                    },
                    indent=2,
                )
            )
        failed = sum(lv.failed for lv in levels)
        if failed:
            log(f"{failed} heartbeats failed")
            return 1
        return 0
    except (BenchError, RpcError) as exc:
        log(f"error: {exc}")
        if manager is not None:
            log(f"manager output:\n{tail(manager.logfile)}")
        return 1
    finally:
        if manager is not None:
            manager.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
