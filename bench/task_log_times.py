#!/usr/bin/env python3
"""Per-line log times (`service logs --since/--timestamps`): what recording them costs.

A task floods its stdout with one write(2) per line (the worst case: no buffering, so the
kernel raises an inotify event per write). The same program runs (1) straight onto a file,
the baseline with nothing watching, and (2) as a task of meshkit's executor, which watches
the file and appends (end, time) records. The program times its own writes, so the figures
compare the task's speed, not the executor's start-up. Also printed: the agent side's CPU
per million lines (this process's CPU time during the task), and how many time records the
flood left (batched at most every 10 ms).

    python bench/task_log_times.py            # 5 rounds x 300,000 lines
    python bench/task_log_times.py --quick    # 1 round x 20,000 lines, the CI smoke test

Needs root (the executor's task setup).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import meshkit  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

FLOOD = """
import os, sys, time
n = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(n):
    os.write(1, b"a line of a flooding task, about sixty bytes long.......\\n")
open(sys.argv[2], "w").write(str(time.perf_counter() - t0))
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def direct(lines: int, tmp: Path) -> float:
    out = tmp / "direct.log"
    took = tmp / "direct.took"
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "-c", FLOOD, str(lines), str(took)], stdout=f, check=True)
    out.unlink()
    return float(took.read_text())


async def under_executor(lines: int, tmp: Path) -> tuple[float, float, int]:
    from meshkit.cluster.tasks import logtimes
    from meshkit.cluster.tasks.executor import Executor

    reports: list[dict[str, object]] = []
    ex = Executor(tmp / "data", "node1", "bench", reports.extend)
    took = tmp / "task.took"
    tid = f"bench{time.time_ns()}"
    record = {
        "id": tid, "service_id": "svc", "service_name": "flood", "slot": 1, "node_id": "node1",
        "desired_state": "running", "state": "assigned",
        "spec": {"command": [sys.executable, "-c", FLOOD, str(lines), str(took)]},
    }  # fmt: skip
    await ex.start()
    try:
        before = cpu()
        ex.sync([record])
        deadline = time.monotonic() + 300
        while not any(r["id"] == tid and r["state"] == "complete" for r in reports):
            if any(r["id"] == tid and r["state"] in ("failed", "rejected") for r in reports):
                raise SystemExit(f"the flood task failed: {reports[-1]}")
            if time.monotonic() > deadline:
                raise SystemExit("the flood task did not end in 300 s")
            await asyncio.sleep(0.01)
        used = cpu() - before
        ends, _ = logtimes.load(ex.tasks_dir / tid, "stdout")
        got = ex.logs(tid, tail=1, timestamps=True)["lines"]
        if not got or len(got[0]) != 3:
            raise SystemExit("no timed line came back")
    finally:
        await ex.close(stop_tasks=True)
    return float(took.read_text()), used, len(ends)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round x 20,000 lines")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lines", type=int, default=300_000)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.lines = 1, 20_000
    if os.geteuid() != 0:
        print("task_log_times: needs root (the executor's task setup)", file=sys.stderr)
        return 2
    base, task, agent_cpu, records = [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="mk-logtimes-") as d:
            base.append(direct(args.lines, Path(d)))
            took, used, n = asyncio.run(under_executor(args.lines, Path(d)))
            task.append(took)
            agent_cpu.append(used)
            records.append(n)
    b, t = statistics.median(base), statistics.median(task)
    print(f"lines per round: {args.lines:,}, rounds: {args.rounds}")
    print(f"direct to a file      {args.lines / b:12,.0f} lines/s  (median {b:.3f} s)")
    print(f"as a watched task     {args.lines / t:12,.0f} lines/s  (median {t:.3f} s)")
    print(f"task speed ratio      {b / t:12.2f}  (1.00 = recording costs the task nothing)")
    per_m = statistics.median(agent_cpu) / args.lines * 1e6
    print(f"agent CPU             {per_m:12.3f} s per million lines (incl. task start/stop)")
    print(f"time records          {statistics.median(records):12,.0f}  per flood")
    return 0


if __name__ == "__main__":
    sys.exit(main())
