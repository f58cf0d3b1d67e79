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
import json
import math
import os
import random
import resource
import shutil
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
CLK_TCK = os.sysconf("SC_CLK_TCK")
TO_START = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting")
SERVICE = "bench-global"
CALL_TIMEOUT = 5.0  # ManagerClient.ask's default, for connects and heartbeats
GOAL_NODES = 1000
GOAL_PCT = 50.0
BUSY_WARN = 20.0  # % of the managers' core taken by other work before we warn
JOIN_TRIES = 5  # as the agent's join: tries of one join (same request id) before it fails

try:
    import meshkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(SRC_DIR))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_probe as probe  # noqa: E402  (the stall classes, run-queue waits, py-spy)
from meshkit.cluster.node.bootstrap import JOIN_RETRY_CODES  # noqa: E402
from meshkit.cluster.node.managers import FAILOVER_CODES  # noqa: E402
from meshkit.cluster.rpc.pki import (  # noqa: E402
    NodeIdentity,
    client_ssl_context,
    new_node_key_and_csr,
)
from meshkit.cluster.rpc.tokens import parse_token  # noqa: E402
from meshkit.cluster.rpc.transport import (  # noqa: E402
    RpcClient,
    RpcError,
    check_ca_bundle,
    fetch_ca_bundle,
)


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port(host: str, avoid: Sequence[int] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its children it waited for (the
    raft dump writers a manager forks), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime alone: the children a manager forked and waited for (raft dump
    writers, the orchestrator's planning children), part of proc_cpu_seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[13:15]) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_jiffies(core: int | None) -> tuple[int, int] | None:
    """(total, idle + iowait) jiffies of one CPU from /proc/stat, None if unknown."""
    if core is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name == f"cpu{core}":
                nums = [int(v) for v in values]
                return sum(nums), nums[3] + nums[4]
    return None


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    if before is None or after is None or after[0] <= before[0]:
        return float("nan")
    total = after[0] - before[0]
    return 100.0 * (total - (after[1] - before[1])) / total


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def raise_fd_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one (the managers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        log(f"warning: only {want} file descriptors allowed; {needed} wanted")


def pin(core: int | None, nice: int = 0) -> Any:
    """The child's CPU and niceness (negative: a higher priority than the host's other work,
    to tell stalls the host causes from ours: --manager-nice).

    The child runs in a session of its own (start_new_session; setsid comes before this
    function). With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled)
    each session is a group that gets an equal share of a CPU whatever its processes' nice
    values, so the niceness goes to the session's autogroup (/proc/self/autogroup) as well."""
    if core is None and not nice:
        return None

    def _pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))

    return _pin


def move_to_core(pid: int, core: int) -> int:
    """Every thread of a running process onto one CPU (a thread's affinity is its own; new
    threads take their creator's); how many threads were moved."""
    moved = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {core})
                moved += 1
    return moved


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def view_get(view: dict[str, Any], key: str) -> Any:
    return view.get(key, view.get(key.lower()))


# --------------------------------------------------------------------------- the managers


class Manager:
    """One manager agent in the foreground, in its own session, stopped by pid."""

    def __init__(self, index: int, tmp: Path) -> None:
        self.index = index
        self.name = f"m{index + 1}"
        self.host = f"127.0.0.{index + 1}"
        self.port = free_port(self.host)
        self.raft_port = free_port(self.host, avoid=(self.port,))
        self.socket = str(tmp / f"{self.name}.sock")
        self.data_dir = tmp / self.name
        self.logfile = tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []
        self.stopped = False  # stopped on purpose (the failover step)

    @property
    def api_addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, args: argparse.Namespace, join: tuple[str, str] | None) -> None:
        """``node init`` (join None) or ``node join --token TOKEN ADDR`` (join = token, addr)."""
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{SRC_DIR}{os.pathsep}{old}" if old else str(SRC_DIR)
        common = [
            "--advertise-addr",
            self.host,
            "--listen-addr",
            self.api_addr,
            "--raft-port",
            str(self.raft_port),
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.socket,
            "--hostname",
            f"bench-{self.name}",
            "--log-level",
            "warning",
        ]
        # --store etcd: the managers keep the log in the bench's etcd (other benches that
        # start managers through this class, cluster_chaos.py, have no such option)
        store_url = getattr(args, "store_url", "")
        if store_url:
            common += ["--store", store_url]
        if join is None:
            sub = ["init", *common, "--dispatcher-heartbeat", f"{args.period:g}s"]
        else:
            token, addr = join
            sub = ["join", "--token", token, *common, addr]
        self.cmd = [*args.meshkit_cmd.split(), "node", *sub]
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us only; we stop it by pid
                preexec_fn=pin(args.manager_core, getattr(args, "manager_nice", 0)),
                env=env,
            )
        shown = [("<manager token>" if c == join[0] else c) for c in self.cmd] if join else self.cmd
        log(f"{self.name} pid {self.pid} on {self.api_addr}: {' '.join(shown)}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.stopped or self.proc is None:
            return
        if self.proc.poll() is not None:
            raise BenchError(
                f"manager {self.name} ({self.api_addr}) exited with status "
                f"{self.proc.returncode}; its output:\n{tail(self.logfile)}"
            )

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> Any:
        """One call on the manager's local socket."""
        client = await RpcClient.connect_unix(self.socket, timeout=5)
        try:
            return await client.call(method, params or {}, timeout=timeout)
        finally:
            await client.close()

    async def wait_up(self, timeout: float) -> None:
        """Until the agent answers ``info`` as a manager holding the cluster state."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                info = await self.call("info")
                if info.get("initialized") and info.get("role") == "manager":
                    return
                last = f"info said role={info.get('role')} initialized={info.get('initialized')}"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
        raise BenchError(
            f"manager {self.name} did not come up within {timeout:.0f} s ({last}); its output:\n"
            f"{tail(self.logfile)}"
        )

    def signal_stop(self) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"warning: {self.name} did not stop within {timeout:g} s of SIGTERM; killed")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=5)


class Cluster:
    """The managers: started, formed into one raft group, asked who leads, stopped."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.managers = [Manager(i, tmp) for i in range(args.managers)]

    @property
    def first(self) -> Manager:
        return self.managers[0]

    def live(self) -> list[Manager]:
        return [m for m in self.managers if not m.stopped]

    def check_alive(self) -> None:
        for m in self.managers:
            m.check_alive()

    def by_addr(self, host: str) -> Manager | None:
        return next((m for m in self.managers if m.host == host), None)

    async def start(self) -> None:
        first = self.first
        first.start(self.args, None)
        await first.wait_up(60)
        if len(self.managers) > 1:
            reply = await first.call("join_token", {"role": "manager", "rotate": False})
            for m in self.managers[1:]:
                m.start(self.args, (reply["token"], first.api_addr))
                await m.wait_up(60)
                await self.wait_formed(m.index + 1, 60)
        await self.wait_formed(len(self.managers), 60)

    async def wait_formed(self, count: int, timeout: float) -> None:
        """Until node ls on the first shows `count` managers Ready, one Leader, the rest
        Reachable, and every one of them has the state with quorum and a leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                reply = await self.first.call("node_ls")
                mgrs = [v for v in reply.get("nodes", []) if view_get(v, "Role") == "manager"]
                statuses = sorted(str(view_get(v, "ManagerStatus")) for v in mgrs)
                ready = all(str(view_get(v, "Status")).lower() == "ready" for v in mgrs)
                want = sorted(["Leader"] + ["Reachable"] * (count - 1))
                if len(mgrs) == count and ready and statuses == want:
                    ok = True
                    for m in self.managers[:count]:
                        st = await m.call("cluster_status")
                        if not st.get("has_quorum") or not st.get("leader"):
                            ok = False
                            last = f"{m.name}: cluster_status {st}"
                    if ok:
                        return
                else:
                    last = f"node ls shows {len(mgrs)} managers: {statuses}, all ready: {ready}"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
        logs = "\n".join(f"--- {m.name}:\n{tail(m.logfile, 10)}" for m in self.managers)
        raise BenchError(
            f"the managers did not form a cluster of {count} within {timeout:.0f} s "
            f"({last}); their output:\n{logs}"
        )

    async def leader(self, timeout: float = 60.0) -> Manager:
        """The manager that says it is the raft leader (the one in the highest term, when an
        old leader has not heard of the new term yet)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            leaders = []
            for m in self.live():
                with contextlib.suppress(RpcError):
                    st = await m.call("cluster_status", timeout=5)
                    if st.get("is_leader"):
                        leaders.append((int(st.get("term") or 0), m))
            terms = sorted(t for t, _ in leaders)
            if len(leaders) == 1 or (len(terms) > 1 and terms[-1] > terms[-2]):
                return max(leaders, key=lambda tm: tm[0])[1]
            last = f"{len(leaders)} managers say they lead (terms {terms})"
            await asyncio.sleep(0.1)
        raise BenchError(f"no single raft leader within {timeout:.0f} s ({last})")

    def stop(self, m: Manager) -> None:
        m.stopped = True
        m.signal_stop()
        m.wait_stopped()

    def stop_all(self) -> None:
        for m in self.managers:
            m.signal_stop()
        for m in self.managers:
            m.wait_stopped()

    def logs(self, lines: int = 10) -> str:
        """The last lines of every started manager's output (none for those that had none)."""
        parts = [(m.name, tail(m.logfile, lines)) for m in self.managers if m.proc is not None]
        return "\n".join(f"--- {name} output:\n{text}" for name, text in parts if text)


# --------------------------------------------------------------------------- simulated nodes


@dataclass
class BeatStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failed_over: int = 0  # beats answered by another manager than the first one tried
    rtts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    by_manager: dict[str, int] = field(default_factory=dict)  # answered beats per API addr


@dataclass
class SimNode:
    index: int
    node_id: str
    ctx: Any  # its mutual-TLS client context
    managers: list[str]  # API addresses, from the join reply, then from heartbeat replies
    manager_idx: int  # as ManagerClient._rotation: random start, moved on when a manager fails
    clients: dict[str, RpcClient] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    watch: asyncio.Task[None] | None = None  # --services: its tasks_watch loop


class Fleet:
    """Simulated worker nodes: join, then heartbeat like the agent's worker does."""

    def __init__(
        self, cluster: Cluster, token: str, bundle: bytes, cluster_id: str, args: argparse.Namespace
    ):
        self.cluster = cluster
        self.token = token
        self.bundle = bundle
        self.cluster_id = cluster_id
        self.period = args.period
        self.join_concurrency = args.join_concurrency
        self.nodes: list[SimNode] = []
        self.stats = BeatStats()
        self.rng = random.Random(args.seed)
        self._join_ctx = client_ssl_context(None, bundle)
        self._joins = 0
        self.closing = False
        self.services = args.services
        self.reported = 0  # --services: tasks reported running
        self.watch_errors: dict[str, int] = {}
        self.join_retries: dict[str, int] = {}  # joins sent again, by the first try's error

    def join_target(self) -> Manager:
        """Joins go through the live managers in turn."""
        live = self.cluster.live()
        self._joins += 1
        return live[self._joins % len(live)]

    async def join_one(self, index: int, via: Manager) -> SimNode:
        """As the agent's join (meshkit.cluster.node.bootstrap.join_call): one request id and
        CSR for every try, tried again through the next manager when the outcome is unknown
        (a retry gets the node the first try made, never a second one)."""
        name = f"sim-{index:05d}"
        key_pem, csr_pem = new_node_key_and_csr(name)
        params = {
            "token": self.token,
            "csr": csr_pem.decode(),
            "hostname": name,
            "advertise_addr": "127.0.0.1",
            "version": "bench",
            "request_id": os.urandom(16).hex(),
        }
        for attempt in range(JOIN_TRIES):
            try:
                client = await RpcClient.connect_tcp(
                    via.host, via.port, self._join_ctx, timeout=30, expect_role="manager"
                )
                try:
                    reply = await client.call("join", params, timeout=60)
                finally:
                    await client.close()
                break
            except RpcError as exc:
                if exc.code not in JOIN_RETRY_CODES or attempt == JOIN_TRIES - 1:
                    raise
                self.join_retries[exc.code] = self.join_retries.get(exc.code, 0) + 1
                log(f"  {name}: join through {via.name}: {exc.message}; trying again")
                await asyncio.sleep(1.0 + attempt)
                via = self.join_target()
        identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, reply["ca"].encode())
        if identity.role != "worker":
            raise BenchError(f"{name} joined as a {identity.role}, expected a worker")
        managers = [str(m) for m in reply.get("managers") or []]
        if not managers:
            raise BenchError(f"{name}: the join reply lists no managers")
        return SimNode(
            index,
            identity.node_id,
            client_ssl_context(identity, self.bundle),
            managers,
            self.rng.randrange(1 << 16),
        )

    def picked(self, node: SimNode) -> str:
        return node.managers[node.manager_idx % len(node.managers)]

    async def _client(self, node: SimNode, addr: str) -> RpcClient:
        client = node.clients.get(addr)
        if client is None or client.closed:
            host, port = split_addr(addr)
            client = await RpcClient.connect_tcp(
                host,
                port,
                node.ctx,
                CALL_TIMEOUT,
                expect_role="manager",
                expect_cluster=self.cluster_id,
            )
            node.clients[addr] = client
        return client

    async def _call(self, node: SimNode, addr: str, params: dict[str, Any]) -> Any:
        """As ManagerClient: one connection per manager, dropped when it fails."""
        client = await self._client(node, addr)
        try:
            return await client.call("heartbeat", params, CALL_TIMEOUT)
        except RpcError as exc:
            if exc.code in ("unreachable", "timeout"):
                node.clients.pop(addr, None)
                await client.close()
            raise

    async def beat(self, node: SimNode) -> None:
        """One heartbeat of a worker: ManagerClient.targets and .ask, by its failover rule."""
        stats = self.stats
        stats.sent += 1
        started = time.perf_counter()
        i = node.manager_idx % len(node.managers)
        targets = node.managers[i:] + node.managers[:i]
        params = {"node_id": node.node_id, "status": {"version": "bench"}}
        for attempt, addr in enumerate(targets):
            try:
                reply = await self._call(node, addr, params)
            except RpcError as exc:
                if exc.code not in FAILOVER_CODES:
                    stats.failed += 1
                    stats.errors[exc.code] = stats.errors.get(exc.code, 0) + 1
                    return
                node.manager_idx += 1
                continue
            stats.ok += 1
            stats.rtts.append(time.perf_counter() - started)
            stats.by_manager[addr] = stats.by_manager.get(addr, 0) + 1
            if attempt:
                stats.failed_over += 1
            if isinstance(reply, dict):
                period = reply.get("period")
                if isinstance(period, (int, float)) and period > 0:
                    self.period = float(period)
                managers = [str(m) for m in reply.get("managers") or []]
                if managers and managers != node.managers:
                    node.managers = managers
            return
        stats.failed += 1
        stats.errors["no manager answered"] = stats.errors.get("no manager answered", 0) + 1

    def start_beating(self, node: SimNode, phase: float) -> None:
        node.task = asyncio.create_task(self._beat_loop(node, phase))
        if self.services:
            node.watch = asyncio.create_task(self._watch_loop(node, phase))

    async def _watch_loop(self, node: SimNode, phase: float) -> None:
        """--services: as the agent's task loop, a ``tasks_watch`` long poll, and every task
        the node is given to run reported running (``task_report``) at once."""
        version: Any = None
        epoch: Any = None
        await asyncio.sleep(phase)  # its first beat opens the connection
        while not self.closing:
            addr = self.picked(node)
            try:
                client = await self._client(node, addr)
                reply = await client.call(
                    "tasks_watch",
                    {"node_id": node.node_id, "version": version, "epoch": epoch, "wait": 20},
                    30,
                )
                version, epoch = reply.get("version"), reply.get("epoch")
                updates = [
                    {"id": t["id"], "state": "running", "message": "started", "pid": 1}
                    for t in reply.get("tasks") or []
                    if t.get("desired_state") == "running" and t.get("state") in TO_START
                ]
                if updates:
                    await client.call(
                        "task_report", {"node_id": node.node_id, "updates": updates}, 30
                    )
                    self.reported += len(updates)
            except RpcError as exc:
                self.watch_errors[exc.code] = self.watch_errors.get(exc.code, 0) + 1
                if exc.code in FAILOVER_CODES:
                    node.clients.pop(addr, None)
                await asyncio.sleep(1.0)

    async def _beat_loop(self, node: SimNode, phase: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(phase)
        due = loop.time()
        while not self.closing:
            await self.beat(node)
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

        async def one(i: int) -> None:
            async with gate:
                node = await self.join_one(i, self.join_target())
            # beating from its join on, as an agent does (not the whole fleet at once at the
            # end: thousands of TLS connections in the same second are no steady state)
            self.nodes.append(node)
            self.start_beating(node, self.rng.uniform(0, self.period))

        await asyncio.gather(*(one(start + i) for i in range(missing)))
        return missing / (time.perf_counter() - began)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the beat loops and close the connections, each step bounded in time.

        A cancel can be lost: on Python 3.11 ``asyncio.wait_for`` (inside ``RpcClient.call``)
        returns the reply instead of raising when the reply and the cancel arrive in the same
        loop iteration, and the beat loop runs on. So the loops also check ``closing``, and
        any still running is cancelled again until it stops."""
        self.closing = True
        pending = {t for n in self.nodes for t in (n.task, n.watch) if t is not None}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        closing = [asyncio.ensure_future(c.close()) for n in self.nodes for c in n.clients.values()]
        if closing:
            _, still = await asyncio.wait(closing, timeout=timeout)
            pending |= still
        if pending:  # left to the loop's shutdown, which cancels them again
            log(f"warning: {len(pending)} simulated-node tasks still running after {timeout:g} s")


# --------------------------------------------------------------------------- Ready timing


@dataclass
class ReadySample:
    join_via: str  # manager name (leader/follower in via_role)
    via_role: str
    beats_to: str  # the manager the node picked
    join_s: float
    leader_s: float  # join start -> Ready in node ls on the leader
    follower_s: float  # ... on the slowest follower (NaN with one manager)
    per_manager_s: dict[str, float]


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
    try:
        join_rate = await fleet.grow_to(count)
    finally:
        if spy is not None:
            spy.stop()
            log(f"py-spy profile of the leader during the growth: {args.profile_leader}")
    cluster.check_alive()
    await asyncio.sleep(fleet.period + 1.0)  # every node beating at steady state
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
