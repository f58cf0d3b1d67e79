"""What a manager's loop stalls are: the host's or ours (used by bench/cluster_heartbeats.py).

A stall is a late raft tick timer (the store's `StallLog`): the loop was busy, or its thread
was runnable but the host ran something else. Each stall carries the CPU the manager used and
the time its loop's thread waited on the run queue meanwhile (kernel schedstat). Here:

- `sched_ms(pid)`: run and run-queue-wait milliseconds of all a process's threads, from
  /proc/PID/task/*/schedstat (how starved a manager was over an interval);
- `classify(stalls)`: stalls over 100 ms split into *starved* (the loop's thread waited for
  a CPU for more than half of the stall) and *busy* (the rest: work of ours on the loop, or a
  blocking call);
- `GrowthMonitor`: every few seconds of a fleet's growth, one log line per manager (stalls
  over 100 ms since the last line, starved/busy, the worst with its CPU and wait, run/wait ms
  per second, raft term), and totals for the report;
- `PySpy`: `py-spy record --nonblocking` of one manager (the leader) for the growth, pinned
  on the simulated nodes' CPU; the raw (collapsed) stacks go to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STALL_MS = 100.0  # the issue's goal: no stall over this on a manager


def sched_ms(pid: int) -> dict[str, tuple[float, float]]:
    """Per thread id: (ms on a CPU, ms waiting on the run queue) since the thread began."""
    out: dict[str, tuple[float, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    fields = f.read().split()
                out[tid] = (int(fields[0]) / 1e6, int(fields[1]) / 1e6)
    return out


def sched_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> tuple[float, float]:
    """(run ms, wait ms) of a process between two `sched_ms` readings: threads in both only
    (a thread's figures count from its start, so a new one would add time before `before`)."""
    run = wait = 0.0
    for tid, (r1, w1) in after.items():
        if tid in before:
            r0, w0 = before[tid]
            run += r1 - r0
            wait += w1 - w0
    return run, wait


Stall = tuple[float, float, float, float]  # monotonic time, ms held, CPU ms, ms waited


def parse_stalls(status: dict[str, Any]) -> list[Stall]:
    """`loop_stalls` of a manager's cluster_status; a manager without the wait figure (older
    code, the etcd replica) gives NaN for it."""
    out: list[Stall] = []
    for e in status.get("loop_stalls") or []:
        waited = float(e[3]) if len(e) > 3 else float("nan")
        out.append((float(e[0]), float(e[1]), float(e[2]), waited))
    return out


@dataclass
class StallClasses:
    over: int = 0  # stalls over STALL_MS
    starved: int = 0  # ... of which the loop's thread waited for a CPU more than half
    busy: int = 0  # ... the others
    unknown: int = 0  # ... without a wait figure
    worst: Stall | None = None
    worst_busy: Stall | None = None

    def add(self, s: Stall) -> None:
        if s[1] <= STALL_MS:
            return
        self.over += 1
        if s[3] != s[3]:  # NaN
            self.unknown += 1
        elif s[3] > s[1] / 2:
            self.starved += 1
        else:
            self.busy += 1
            if self.worst_busy is None or s[1] > self.worst_busy[1]:
                self.worst_busy = s
        if self.worst is None or s[1] > self.worst[1]:
            self.worst = s

    def text(self) -> str:
        if not self.over:
            return f"no stall over {STALL_MS:.0f} ms"
        w = self.worst
        assert w is not None
        out = (
            f"{self.over} stalls > {STALL_MS:.0f} ms ({self.starved} starved, {self.busy} busy"
            + (f", {self.unknown} unknown" if self.unknown else "")
            + f"), worst {w[1]:.0f} ms ({w[2]:.0f} CPU, {w[3]:.0f} waited)"
        )
        b = self.worst_busy
        if b is not None and b is not w:
            out += f", worst busy {b[1]:.0f} ms ({b[2]:.0f} CPU, {b[3]:.0f} waited)"
        return out


def classify(stalls: Sequence[Stall], since: float, until: float) -> StallClasses:
    classes = StallClasses()
    for s in stalls:
        if since <= s[0] <= until:
            classes.add(s)
    return classes


@dataclass
class ProbeTotals:
    """Per manager over the growth: the stall classes and run/wait ms."""

    classes: dict[str, StallClasses] = field(default_factory=dict)
    run_ms: dict[str, float] = field(default_factory=dict)
    wait_ms: dict[str, float] = field(default_factory=dict)
    loop_run_ms: dict[str, float] = field(default_factory=dict)  # the loop's thread alone
    joined: int = 0  # nodes added while the monitor ran
    gc_worst_ms: dict[str, float] = field(default_factory=dict)  # longest collection seen
    audits: dict[str, list[str]] = field(default_factory=dict)  # frozen-garbage audits seen
    seconds: float = 0.0

    def text(self, name: str) -> str:
        per_s = max(self.seconds, 1e-9)
        loop_ms = self.loop_run_ms.get(name, 0.0)
        return (
            f"{name}: {self.classes.get(name, StallClasses()).text()}; "
            f"ran {self.run_ms.get(name, 0.0) / per_s:.0f} ms/s "
            f"(loop thread {loop_ms / per_s:.0f}{per_join(loop_ms, self.joined)}), "
            f"waited {self.wait_ms.get(name, 0.0) / per_s:.0f} ms/s for a CPU"
            + (f"; longest GC {self.gc_worst_ms[name]:.0f} ms" if name in self.gc_worst_ms else "")
            + (
                f"; {len(self.audits[name])} GC audits, first/last: {self.audits[name][0]} / "
                f"{self.audits[name][-1]}"
                if self.audits.get(name)
                else ""
            )
        )


def audit_text(status: dict[str, Any]) -> tuple[float, str] | None:
    """A manager's last frozen-garbage audit (`gc_audit`: what a full collection would free,
    counted in a forked child) as (monotonic time, text); None from an older manager."""
    a = status.get("gc_audit")
    if not isinstance(a, dict) or "at" not in a:
        return None
    types = ", ".join(f"{k} {v}" for k, v in list((a.get("types") or {}).items())[:4])
    return float(a["at"]), (
        f"garbage {a.get('garbage')} of {a.get('frozen')} frozen ({types}), "
        f"rss {float(a.get('rss_mb', 0.0)):.0f} MB"
        + (
            ", in a raft dump's child"
            if a.get("fork_ms") == "dump"
            else f", its fork {a.get('fork_ms', '?')} ms"
        )
    )


def gc_in(status: dict[str, Any], since: float, until: float) -> list[float]:
    """CPU ms of each garbage collection over 20 ms (wall) between `since` and `until` (a
    manager's `gc_pauses`: [monotonic time, ms, generation, freed, CPU ms]; the wall ms when
    the CPU figure is missing; none from an older manager). CPU, because on a loaded host a
    collection's wall time includes waits for a CPU."""
    out = []
    for e in status.get("gc_pauses") or []:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            if since <= float(e[0]) <= until:
                out.append(float(e[4]) if len(e) > 4 else float(e[1]))
    return out


def per_join(loop_ms: float, joined: int) -> str:
    """The loop thread's CPU per node that joined, as text (empty when none joined): everything
    the loop did meanwhile (beats included) charged to the joins, so an upper bound."""
    return f", {loop_ms / joined:.2f} ms per join" if joined > 0 else ""


class GrowthMonitor:
    """Polls the managers while the fleet grows; `stop()` returns the totals."""

    _last: float
    _sched: dict[str, dict[str, tuple[float, float]]]
    _size_then: int  # fleet size at start()
    _size_last: int  # at the last sample

    def __init__(
        self,
        managers: Callable[[], Sequence[Any]],  # live Manager objects (name, pid, call)
        size: Callable[[], int],
        log: Callable[[str], None],
        every: float = 10.0,
    ) -> None:
        self._managers = managers
        self._size = size
        self._log = log
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self.totals = ProbeTotals()
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._size_then = self._size_last = self._size()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> ProbeTotals:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sample(final=True)
        self.totals.seconds = time.monotonic() - self._began
        return self.totals

    async def _run(self) -> None:
        self._last = time.monotonic()
        self._sched = {m.name: sched_ms(m.pid) for m in self._managers()}
        self._gc_cpu: dict[str, float] = {}  # each manager's gc_cpu_ms at the last look
        while True:
            await asyncio.sleep(self._every)
            await self._sample()

    async def _sample(self, final: bool = False) -> None:
        if not hasattr(self, "_last"):
            return
        now = time.monotonic()
        span = max(now - self._last, 1e-9)
        size = self._size()
        joined = size - self._size_last
        self._size_last = size
        self.totals.joined = size - self._size_then
        parts = []
        for m in self._managers():
            try:
                st = await m.call("cluster_status", timeout=5)
            except Exception:  # a manager too starved to answer is itself a finding
                parts.append(f"{m.name} no answer")
                continue
            stalls = parse_stalls(st)
            recent = classify(stalls, self._last, now)
            total = self.totals.classes.setdefault(m.name, StallClasses())
            for s in stalls:
                if self._last <= s[0] <= now:
                    total.add(s)
            now_sched = sched_ms(m.pid)
            before = self._sched.get(m.name, now_sched)
            run, wait = sched_delta(before, now_sched)
            loop_pair = str(m.pid)  # the main thread, the event loop's
            loop_run, loop_wait = sched_delta(
                {loop_pair: before.get(loop_pair, (0.0, 0.0))},
                {loop_pair: now_sched.get(loop_pair, (0.0, 0.0))},
            )
            self.totals.loop_run_ms[m.name] = self.totals.loop_run_ms.get(m.name, 0.0) + loop_run
            self._sched[m.name] = now_sched
            self.totals.run_ms[m.name] = self.totals.run_ms.get(m.name, 0.0) + run
            self.totals.wait_ms[m.name] = self.totals.wait_ms.get(m.name, 0.0) + wait
            lead = "*" if st.get("is_leader") else ""
            gcs = gc_in(st, self._last, now)
            if gcs:
                worst_gc = max(gcs)
                self.totals.gc_worst_ms[m.name] = max(
                    self.totals.gc_worst_ms.get(m.name, 0.0), worst_gc
                )
                recent_text = (
                    f"{recent.text()}; GC {len(gcs)} over 20 ms, worst {worst_gc:.0f} ms CPU"
                )
            else:
                recent_text = recent.text()
            gc_cpu = float(st.get("gc_cpu_ms", 0.0))
            before_gc = self._gc_cpu.get(m.name, gc_cpu)
            self._gc_cpu[m.name] = gc_cpu
            if gc_cpu > before_gc:  # all collections, CPU: the collector's share of the loop
                recent_text += f"; GC CPU {(gc_cpu - before_gc) / span:.0f} ms/s"
            audit = audit_text(st)
            if audit is not None and self._last <= audit[0] <= now:
                self.totals.audits.setdefault(m.name, []).append(audit[1])
                recent_text += f"; GC audit: {audit[1]}"
            parts.append(
                f"{m.name}{lead} t{st.get('term')} run {run / span:.0f}/wait "
                f"{wait / span:.0f} ms/s (loop thread ran {loop_run / span:.0f}"
                f"{per_join(loop_run, joined)}, waited {loop_wait / span:.0f}), "
                f"{recent_text}"
            )
        self._last = now
        if not final:
            self._log(f"  growth {self._size()} nodes: " + "; ".join(parts))


class PySpy:
    """`py-spy record --nonblocking --format raw` of one process (py-spy never pauses it:
    a paused manager would stall for the profiler)."""

    def __init__(self, pid: int, out: Path, core: int | None) -> None:
        self.out = out
        exe = shutil.which("py-spy")
        self.proc: subprocess.Popen[bytes] | None = None
        if exe is None:
            print("py-spy not found: no profile", file=sys.stderr)
            return
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                "50",
                "--pid",
                str(pid),
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- tls-accept bench
#
#   python bench/cluster_probe.py tls-accept [--conns 600] [--concurrency 32] [--quick]
#
# The manager's RPC server alone, in this process, while a forked client opens --conns mutual-
# TLS connections (--concurrency at once), each making one call: the server's loop-thread CPU
# per connection, the process's CPU per connection and the worst loop lag (a 5 ms ticker), with
# the handshakes in meshkit's pool (`pool`, rpc/tlsaccept.py) and with asyncio's TLS on the
# loop (`loop`, as before it). Rounds alternate; medians are printed.


def _tls_accept_round(mode: str, conns: int, concurrency: int) -> tuple[float, float, float]:
    import multiprocessing

    import uvloop

    from meshkit.cluster.rpc import pki
    from meshkit.cluster.rpc import server as rpc_server
    from meshkit.cluster.rpc.transport import RpcClient, RpcServer

    ca = pki.ClusterCA.create("bench-tls")
    mgr = ca.issue_identity("mgr-1", "manager")
    ids = [ca.issue_identity(f"n-{i}", "worker") for i in range(concurrency)]

    async def on_loop(conn: Any, ctx: Any, factory: Any, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(
            factory, conn, ssl=ctx, ssl_handshake_timeout=timeout
        )
        return transport

    original = rpc_server.accept_tls
    if mode == "loop":
        rpc_server.accept_tls = on_loop  # type: ignore[assignment]

    def clients(port: int) -> None:
        async def main() -> None:
            gate = asyncio.Semaphore(concurrency)
            ctxs = [pki.client_ssl_context(i, ca.bundle_pem) for i in ids]

            async def one(k: int) -> None:
                async with gate:
                    c = await RpcClient.connect_tcp("127.0.0.1", port, ctxs[k % concurrency])
                    async with c:
                        await c.call("ping")

            await asyncio.gather(*(one(k) for k in range(conns)))

        uvloop.run(main())

    async def serve() -> tuple[float, float, float]:
        async def dispatch(peer: Any, method: str, params: Any) -> Any:
            return "pong"

        server = RpcServer(dispatch)
        _, port = await server.listen_tcp("127.0.0.1", 0, pki.server_ssl_context(mgr))
        lag = 0.0
        done = False

        async def ticker() -> None:
            nonlocal lag
            loop = asyncio.get_running_loop()
            while not done:
                t = loop.time()
                await asyncio.sleep(0.005)
                lag = max(lag, loop.time() - t - 0.005)

        tick = asyncio.ensure_future(ticker())
        t0, p0 = time.thread_time(), time.process_time()
        proc = multiprocessing.get_context("fork").Process(target=clients, args=(port,))
        proc.start()
        while proc.is_alive():
            await asyncio.sleep(0.05)
        t1, p1 = time.thread_time(), time.process_time()
        done = True
        await tick
        await server.close()
        if proc.exitcode != 0:
            raise SystemExit(f"the client process failed ({proc.exitcode})")
        return 1000 * (t1 - t0) / conns, 1000 * (p1 - p0) / conns, 1000 * lag

    try:
        result: tuple[float, float, float] = uvloop.run(serve())
    finally:
        rpc_server.accept_tls = original  # type: ignore[assignment]
    return result


def tls_accept_main(argv: Sequence[str]) -> int:
    import argparse
    import statistics

    ap = argparse.ArgumentParser(prog="cluster_probe.py tls-accept")
    ap.add_argument("--conns", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 40 connections, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.conns, args.concurrency, args.rounds = 40, 8, 1
    rows: dict[str, list[tuple[float, float, float]]] = {"loop": [], "pool": []}
    for _ in range(args.rounds):
        for mode in ("loop", "pool"):
            rows[mode].append(_tls_accept_round(mode, args.conns, args.concurrency))
    print(f"{args.conns} mTLS connections, {args.concurrency} at once, {args.rounds} round(s):")
    for mode, got in rows.items():
        med = [statistics.median(x[i] for x in got) for i in range(3)]
        print(
            f"  handshakes on the {mode:4}: loop thread {med[0]:.2f} ms/conn, process "
            f"{med[1]:.2f} ms/conn, worst loop lag {med[2]:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["tls-accept"]:
        raise SystemExit("usage: python bench/cluster_probe.py tls-accept [--quick] ...")
    raise SystemExit(tls_accept_main(sys.argv[2:]))
