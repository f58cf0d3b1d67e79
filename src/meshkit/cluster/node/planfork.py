"""The orchestrator's plan made in a forked child, so that it never holds the leader's loop.

`plan()` (meshkit.cluster.model.orchestrator) walks every service, task and node: at 5,000
nodes with a global service it took 100-400 ms of CPU, and on the leader's event loop that was
one stall per plan (raft heartbeats late, followers calling elections). Here the leader forks;
the child plans on a copy-on-write view of the state as it was at the fork, pickles the
commands into a pipe and exits; the parent reads them in an executor thread while its loop
goes on applying and answering. The fork itself copies only page tables (a few ms).

The plan may be a little older than the state when it is submitted: that is already so when
it is made on the loop (its commands commit one after another while other writes interleave),
and every command is checked where it is applied (a task for a service removed meanwhile, an
assignment to a node gone, a task created twice are skipped there).

Anything that goes wrong in the child (or a platform without fork) makes the caller plan on
the loop as before, so a planner bug is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import signal
from collections.abc import Callable
from typing import Any

from meshkit.cluster.model.orchestrator import Plan, plan
from meshkit.cluster.model.state import ClusterState

CHILD_NICE = 5
"""How much lower the planning child's priority is than the agent's (nice increment)."""


class PlanFailed(Exception):
    """The child could not make the plan (the caller plans on the loop instead)."""


def _child(state: ClusterState, now: float, new_id: Callable[[], str], out: int) -> int:
    """In the forked child: plan, write the pickled plan to `out`; the exit status."""
    # The child lives a few hundred ms: no collection (it would touch, and copy, every page),
    # and a signal must not wake the parent's loop through the shared wake-up fd.
    gc.disable()
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    # The child shares the leader's CPU(s): at the same priority it took its share of the core
    # from the very loop it was forked to keep free (the leader's stalls during growth were
    # mostly waits for the CPU). A lower priority gives the loop the core first.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    p = plan(state, now, new_id)
    data = memoryview(pickle.dumps((p.commands, p.wake_at), protocol=pickle.HIGHEST_PROTOCOL))
    while data:
        data = data[os.write(out, data) :]
    return 0


def _collect(fd: int, pid: int) -> tuple[bytes, int]:
    """In an executor thread: everything the child wrote, then its exit status."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return b"".join(chunks), status


async def plan_forked(state: ClusterState, now: float, new_id: Callable[[], str]) -> Plan:
    """`plan(state, now, new_id)` made in a forked child; PlanFailed when it could not be."""
    if not hasattr(os, "fork"):
        raise PlanFailed("no fork on this platform")
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        raise PlanFailed(f"fork: {exc}") from None
    if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
        code = 1
        try:
            os.close(r)
            code = _child(state, now, new_id, w)
        finally:
            os._exit(code)
    os.close(w)
    data, status = await loop.run_in_executor(None, _collect, r, pid)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not data:
        raise PlanFailed(f"the planning child ended with status {status:#x}")
    commands: list[dict[str, Any]]
    commands, wake_at = pickle.loads(data)
    return Plan(commands, wake_at)
