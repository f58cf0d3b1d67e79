#!/usr/bin/env python3
"""How fast a service converges: `service create --replicas 100` then `scale` to 500.

Three real agents, each its own process with its own data dir and socket in a temporary
directory: a manager (``node init`` on 127.0.0.1) and two workers (``node join`` on 127.0.0.2
and 127.0.0.3). The service runs ``sleep 3600``. For each step the bench measures the time
from the request (``service_create`` / ``service_scale`` on the manager's socket) until
``service ls`` on the manager shows every task running, the tasks started per second, and the
CPU share of each agent over that time (utime + stime from /proc/<pid>/stat; 100 % = one core).
Then ``service rm`` and the time until every task process has exited.

``--variants plain,limits`` (the default) runs the steps twice: tasks as they are, and tasks
with a task runtime (``--limit-cpu 0.5 --limit-memory 64M --limit-pids 100``: a cgroup per
task, written before its exec; a tmpfs and a local volume mount in its mount namespace), so
that the start cost of limits and mounts shows as tasks per second side by side. The agents'
cgroups go under a parent of the bench's own, removed at the end.

There is no anchor on this machine (no Docker engine to run swarm's own scheduler side by
side); the figures stand alone. Docker's documentation gives none to compare with either.

    python bench/service_converge.py               # 100 then 500 tasks
    python bench/service_converge.py --quick       # smoke run: 10 then 30 tasks
    python bench/service_converge.py --replicas 200,1000
    python bench/service_converge.py --variants limits

Everything started here is stopped by pid when the run ends (also on failures); task
processes left by a failed run are killed by the pids the manager reported; the temporary
directory is removed. Exit status 0 when every step converged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SRC_DIR = Path(__file__).resolve().parent.parent / "src"
try:
    import meshkit  # noqa: F401  (the installed one, with its compiled fast path)

    INSTALLED = True
except ImportError:  # run from a checkout without installing
    INSTALLED = False
    sys.path.insert(0, str(SRC_DIR))

from meshkit.cli.servicespec import build_spec  # noqa: E402
from meshkit.cluster.rpc.transport import RpcClient, RpcError  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CGROUP_ENV = "MESHKIT_CGROUP_PARENT"
CGROUP_PARENT = f"mk-bench-{os.getpid()}"


def runtime_flags(variant: str, tmp: Path) -> dict[str, Any]:
    """The spec flags of a variant: none, or limits plus a tmpfs and a volume mount."""
    if variant == "plain":
        return {}
    return {
        "limit_cpu": "0.5",
        "limit_memory": "64M",
        "limit_pids": "100",
        "mount": [
            f"type=tmpfs,dst={tmp}/mnt/t,tmpfs-size=1M",
            f"type=volume,src=bv,dst={tmp}/mnt/v",
        ],
    }


def remove_cgroup_parent() -> None:
    """The bench's own cgroup parent folders (each task's cgroup went with the task)."""
    from meshkit.cluster.tasks.cgroups import host_setup

    setup = host_setup()
    roots = [setup.v2_root] if setup.version == "v2" else list(set(setup.v1.values()))
    for root in roots:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(root, CGROUP_PARENT))


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def free_port(host: str, avoid: Sequence[int] = ()) -> int:
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid and port + 1 not in avoid:
            return port


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Agent:
    def __init__(self, name: str, host: str, tmp: Path) -> None:
        self.name = name
        self.host = host
        self.port = free_port(host)
        self.raft_port = free_port(host, avoid=(self.port,))
        self.socket = str(tmp / f"{name}.sock")
        self.data_dir = tmp / name
        self.logfile = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, join: tuple[str, str] | None) -> None:
        common = [
            "--advertise-addr", self.host, "--listen-addr", f"{self.host}:{self.port}",
            "--raft-port", str(self.raft_port), "--data-dir", str(self.data_dir),
            "--host", self.socket, "--hostname", f"bench-{self.name}", "--log-level", "warning",
        ]  # fmt: skip
        if join is None:
            sub = ["init", *common, "--dispatcher-heartbeat", "1s"]
        else:
            sub = ["join", "--token", join[0], *common, join[1]]
        env = dict(os.environ) if INSTALLED else {**os.environ, "PYTHONPATH": str(SRC_DIR)}
        env[CGROUP_ENV] = CGROUP_PARENT
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshkit", "node", *sub],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        log(f"{self.name} pid {self.proc.pid} on {self.host}:{self.port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            out = self.logfile.read_text(errors="replace")[-3000:]
            raise BenchError(f"agent {self.name} exited ({self.proc.returncode}):\n{out}")

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        client = await RpcClient.connect_unix(self.socket, timeout=5)
        try:
            return await client.call(method, params or {}, timeout=60)
        finally:
            await client.close()

    async def wait_up(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(RpcError, OSError):
                info = await self.call("info")
                if info.get("initialized"):
                    return
            await asyncio.sleep(0.1)
        raise BenchError(f"agent {self.name} did not come up in {timeout:g} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def wait_running(mgr: Agent, agents: list[Agent], name: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for a in agents:
            a.check_alive()
        services = (await mgr.call("service_ls"))["services"]
        svc = next((s for s in services if s["Name"] == name), None)
        if svc is not None:
            last = svc["Replicas"]
            if svc["Running"] >= n:
                return
        await asyncio.sleep(0.05)
    raise BenchError(f"{name}: {n} tasks not running after {timeout:g} s (last {last})")


async def task_pids(mgr: Agent, name: str) -> list[int]:
    with contextlib.suppress(RpcError, OSError):
        reply = await mgr.call("service_ps", {"service": name})
        return [int(t["Pid"]) for t in reply["tasks"] if t.get("Pid")]
    return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def step(
    mgr: Agent, agents: list[Agent], name: str, n: int, before: int, timeout: float,
    flags: dict[str, Any],
) -> dict[str, float]:  # fmt: skip
    cpu0 = {a.name: proc_cpu_seconds(a.pid) for a in agents}
    t0 = time.monotonic()
    if before == 0:
        spec = build_spec({"name": name, "replicas": str(n), "command": ["sleep", "3600"], **flags})
        await mgr.call("service_create", {"spec": spec})
    else:
        await mgr.call("service_scale", {"service": name, "replicas": n})
    await wait_running(mgr, agents, name, n, timeout)
    dt = time.monotonic() - t0
    out = {"seconds": dt, "tasks_per_s": (n - before) / dt}
    for a in agents:
        out[f"cpu_{a.name}"] = 100.0 * (proc_cpu_seconds(a.pid) - cpu0[a.name]) / dt
    return out


async def run(args: argparse.Namespace, tmp: Path, agents: list[Agent]) -> int:
    mgr = Agent("m1", "127.0.0.1", tmp)
    agents.append(mgr)
    mgr.start(None)
    await mgr.wait_up()
    token = (await mgr.call("join_token", {"role": "worker", "rotate": False}))["token"]
    for i, name in enumerate(("w1", "w2"), start=2):
        w = Agent(name, f"127.0.0.{i}", tmp)
        agents.append(w)
        w.start((token, f"{mgr.host}:{mgr.port}"))
    for a in agents[1:]:
        await a.wait_up()
    deadline = time.monotonic() + 30
    while len((await mgr.call("node_ls"))["nodes"]) < 3:
        if time.monotonic() > deadline:
            raise BenchError("the workers did not join")
        await asyncio.sleep(0.1)
    for variant in args.variants.split(","):
        await run_variant(args, tmp, agents, mgr, variant)
    return 0


async def run_variant(
    args: argparse.Namespace, tmp: Path, agents: list[Agent], mgr: Agent, variant: str
) -> None:
    name = f"bench-{variant}"
    flags = runtime_flags(variant, tmp)
    counts = [int(x) for x in args.replicas.split(",")]
    before = 0
    try:
        for n in counts:
            r = await step(mgr, agents, name, n, before, args.timeout, flags)
            what = "create" if before == 0 else f"scale {before} ->"
            before = n
            cpu = ", ".join(f"{a.name} {r['cpu_' + a.name]:.0f}%" for a in agents)
            print(
                f"[{variant}] {what} {n} tasks: running in {r['seconds']:.2f} s, "
                f"{r['tasks_per_s']:.0f} tasks/s; agent CPU {cpu} (m1 is the manager)",
                flush=True,
            )
        pids = await task_pids(mgr, name)
        t0 = time.monotonic()
        await mgr.call("service_rm", {"service": name})
        deadline = time.monotonic() + args.timeout
        while any(alive(p) for p in pids):
            if time.monotonic() > deadline:
                raise BenchError("tasks still running after service rm")
            await asyncio.sleep(0.05)
        gone = time.monotonic() - t0
        print(f"[{variant}] service rm: all {len(pids)} task processes gone in {gone:.2f} s")
    finally:
        for p in await task_pids(mgr, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="100,500", help="task counts, in order (create, scale)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 then 30 tasks")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per step")
    ap.add_argument(
        "--variants", default="plain,limits", help="plain and/or limits (cgroups and mounts)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.replicas, args.timeout = "10,30", 60.0
    tmp = Path(tempfile.mkdtemp(prefix="mk-converge-"))
    agents: list[Agent] = []
    try:
        import uvloop

        return uvloop.run(run(args, tmp, agents))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for a in reversed(agents):
            a.stop()
        remove_cgroup_parent()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
