"""Helpers of bench/cluster_heartbeats.py: its constants, its error, CPU readings from
/proc, pinning to a CPU (and niceness), small statistics."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import statistics
import sys
from collections.abc import Sequence
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
