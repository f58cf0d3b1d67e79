"""`ServiceLoops`: the leader's orchestrator, and every node's task assignments, network map
and task reports.

- Orchestrator (raft leader only): after every applied change (coalesced for a few
  milliseconds) and when the last plan asked to be woken, run the pure planner
  (meshkit.cluster.model.orchestrator.plan) on the replicated state and commit what it returns, one
  command at a time, so that the next plan sees the result of the last one.
- Assignment (every node): a long poll (`tasks_watch`) to a manager (by the one failover rule
  of meshkit.cluster.node.managers), or to this node's own API when it is a manager, returns
  the tasks assigned to this node whenever they change; they go to the executor's `sync()`.
- Network map (every node): a long poll (`netmap_watch`) like the assignments; each map goes
  to the node's overlay (meshkit.net.overlay), which builds networks and programs peers.
- Reports (every node): what the executor reports is queued and sent in batches
  (`task_report`) to a manager; a manager commits the batches of all its nodes as one
  `task_status` command about every REPORT_BATCH seconds. A batch that cannot be delivered is
  kept and sent again (states only move forward, so a repeat is harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.common import new_node_id
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.node.managers import FAILOVER_CODES
from meshkit.cluster.rpc.transport import RpcError

if TYPE_CHECKING:
    from meshkit.cluster.tasks.executor import Executor

log = logging.getLogger(__name__)

PLAN_COALESCE = 0.02
"""Seconds the orchestrator waits after a change for more changes before planning."""

PLAN_GAP = 0.5
"""Seconds at least between two plans while changes keep coming: a plan is O(state), and
with thousands of nodes joining and reporting it held the leader's loop most of the time."""

PLAN_GAP_FACTOR = 4.0
"""...and at least this many times as long as the last plan took: each plan is a fork, after
which the leader's loop pays a copy-on-write page fault for every page it writes (its objects'
reference counts), and the child faults over the whole state. With 3,000-5,000 nodes joining a
global service the leader's process took 68,000 page faults a second and its plan children
about 0.3 of a core while plans ran back to back 0.5 s apart. A plan that takes 0.5 s now runs
at most every 2 s; a small cluster's plans stay 0.5 s apart. Never more than PLAN_GAP_MAX (a
child slowed by a starved host must not hold back new tasks for long)."""

PLAN_GAP_MAX = 3.0

PLAN_TICK = 1.0
"""Seconds between looks at whether a plan is due when nothing wakes the orchestrator."""

PLAN_IDLE = 30.0
"""Seconds at most between two plans of a leader when nothing changes (a safety net: every
change wakes the orchestrator, and timers come back as the plan's ``wake_at``)."""

REPORT_BATCH = 0.05
"""Seconds reports are gathered before they are sent (node) or committed (manager)."""

WATCH_WAIT = 20.0


def compact(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One update per task, later fields over earlier ones: states only move forward, so the
    merged update says all the separate ones did (and a node cut off from the managers
    keeps one entry per task, not one per report)."""
    from meshkit.cluster.model.services import TERMINAL

    merged: dict[str, dict[str, Any]] = {}
    for u in updates:
        tid = str(u.get("id"))
        if tid not in merged:
            merged[tid] = dict(u)
        elif merged[tid].get("state") not in TERMINAL:  # an end state is final, as in apply
            merged[tid].update(u)
    return list(merged.values())


FETCH_TRIES = 4
"""Tries of task_secrets on a refusal that a lagging manager may give (forbidden)."""


class ServiceLoops:
    """The service loops of one node, and its task executor."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.executor: Executor | None = None
        self.plan_now = asyncio.Event()
        self._outbox: list[dict[str, Any]] = []
        self._outbox_ready = asyncio.Event()
        # manager side: updates from nodes waiting for one task_status commit
        self._commit_batch: list[dict[str, Any]] = []
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._commit_kick = asyncio.Event()

    # -- executor ------------------------------------------------------------------------------

    async def start_executor(self) -> None:
        from meshkit.cluster.tasks.executor import Executor

        self.executor = Executor(
            self.node.data_dir,
            self.node.node_id,
            self.node.hostname,
            self.report,
            overlay=self.node.overlay,
            mesh=self.node.mesh,
            fetch_files=self.fetch_files,
        )
        await self.executor.start()

    async def fetch_files(self, task_id: str) -> dict[str, Any]:
        """A task's secrets and configs, from a manager (this one first, when it is one)."""
        params = {"node_id": self.node.node_id, "task_id": task_id}
        if self.node.is_manager and self.node.state is not None:
            try:
                result: dict[str, Any] = await self.node.call_self("task_secrets", params)
                return result
            except RpcError as exc:
                if exc.code not in FAILOVER_CODES:
                    raise
        for attempt in range(FETCH_TRIES):
            try:
                result = await self.node.ask_managers("task_secrets", params)
                return dict(result)
            except RpcError as exc:
                # the manager that answered may not have applied the assignment yet
                if exc.code != "forbidden" or attempt == FETCH_TRIES - 1:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close_executor(self, stop_tasks: bool) -> None:
        if self.executor is not None:
            await self.executor.close(stop_tasks)

    def report(self, updates: list[dict[str, Any]]) -> None:
        """The executor's callback."""
        self._outbox.extend(updates)
        self._outbox_ready.set()

    def loops(self) -> list[tuple[str, Callable[[], Any]]]:
        return [
            ("orchestrator", self.orchestrate_loop),
            ("assignments", self.watch_loop),
            ("reports", self.report_loop),
            ("task-status", self.commit_loop),
            ("netmap", self.netmap_loop),
        ]

    # -- leader: the orchestrator --------------------------------------------------------------

    def applied(self, cmd: dict[str, Any]) -> None:
        self.plan_now.set()

    async def orchestrate_loop(self) -> None:
        from meshkit.cluster.model.orchestrator import plan, split_writes
        from meshkit.cluster.node.planfork import PlanFailed, plan_forked

        node = self.node
        wake_at: float | None = None
        planned_at = float("-inf")
        plan_took = 0.0  # seconds the last plan took (wall: the fork, the child, the read)
        leading = False  # whether the last turn planned as the leader
        while not node.stopping:
            timeout = PLAN_TICK
            if wake_at is not None:
                timeout = min(timeout, max(0.0, wake_at - time.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.plan_now.wait(), timeout)
            st = node.state
            if not (node.is_manager and node.is_leader and node.has_quorum) or st is None:
                self.plan_now.clear()  # (a follower applies too: no busy loop on its flag)
                wake_at = None
                leading = False
                continue
            if not st.initialized:
                self.plan_now.clear()
                continue
            # A plan is O(state): made when something changed, when the last plan asked to be
            # woken, on becoming the leader, and at least every PLAN_IDLE seconds (not at
            # every PLAN_TICK: an idle cluster of thousands of tasks planned once a second).
            due = wake_at is not None and time.time() >= wake_at
            idle = time.monotonic() - planned_at < PLAN_IDLE
            if leading and not self.plan_now.is_set() and not due and idle:
                continue
            gap = min(max(PLAN_GAP, PLAN_GAP_FACTOR * plan_took), PLAN_GAP_MAX)
            await asyncio.sleep(max(PLAN_COALESCE, planned_at + gap - time.monotonic()))
            planned_at = time.monotonic()
            self.plan_now.clear()
            leading = True
            try:
                try:
                    p = await plan_forked(st, time.time(), new_node_id)
                except PlanFailed as exc:
                    log.debug("orchestrator: planning on the loop (%s)", exc)
                    p = plan(st, time.time(), new_node_id)
                plan_took = time.monotonic() - planned_at
            except Exception:  # a planner bug must not stop the leader's other work
                log.exception("orchestrator: planning failed")
                await asyncio.sleep(1.0)
                continue
            wake_at = p.wake_at
            if not (node.is_leader and node.state is st):
                self.plan_now.set()  # the leadership (or the state) changed meanwhile
                continue
            for cmd in split_writes(p.commands):
                try:
                    await node.submit(cmd)
                except MeshkitError as exc:
                    log.warning("orchestrator: cannot commit %s: %s", cmd.get("op"), exc)
                    self.plan_now.set()  # plan again from what the state holds now
                    break

    # -- every node: assignments ---------------------------------------------------------------

    async def _watch_once(
        self, epoch: str | None, version: int | None, method: str = "tasks_watch"
    ) -> dict[str, Any]:
        node = self.node
        params = {
            "node_id": node.node_id,
            "epoch": epoch,
            "version": version,
            "wait": WATCH_WAIT,
        }
        st = node.state
        if node.is_manager and st is not None and st.initialized:
            return dict(await node.call_self(method, params))
        return dict(await node.ask_managers(method, params, timeout=WATCH_WAIT + 10))

    async def _follow(
        self, method: str, what: str, take: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Long-poll `method` and hand every answer to `take`; a failed `take` asks again for
        the whole answer (the version is forgotten) after a second."""
        epoch: str | None = None
        version: int | None = None
        while not self.node.stopping:
            try:
                reply = await self._watch_once(epoch, version, method)
            except RpcError as exc:
                log.debug("%s: %s", what, exc.message)
                epoch = version = None
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("%s: watch failed", what)
                epoch = version = None
                await asyncio.sleep(1.0)
                continue
            epoch, version = reply.get("epoch"), reply.get("version")
            try:
                await take(reply)
            except Exception:
                log.exception("%s: applying failed", what)
                epoch = version = None
                await asyncio.sleep(1.0)

    async def watch_loop(self) -> None:
        """Follow this node's task assignments into the executor."""
        while self.executor is None and not self.node.stopping:
            await asyncio.sleep(0.1)

        async def take(reply: dict[str, Any]) -> None:
            if self.executor is not None:
                self.executor.sync(list(reply.get("tasks") or []))

        await self._follow("tasks_watch", "task assignments", take)

    # -- every node: the overlay ---------------------------------------------------------------

    async def netmap_loop(self) -> None:
        """Follow the network map and build this node's overlay from it."""

        async def take(reply: dict[str, Any]) -> None:
            netmap = dict(reply.get("netmap") or {})
            overlay, mesh = self.node.overlay, self.node.mesh
            # the mesh lets go of networks that leave (its sockets would keep their
            # namespaces), the overlay follows the map, then the mesh builds on what is up
            await mesh.apply(netmap, overlay.built() & set(netmap.get("networks") or {}))
            await overlay.apply(netmap, reply.get("netkeys") or {})  # keys: in memory only
            await mesh.apply(netmap, overlay.built())

        await self._follow("netmap_watch", "network map", take)

    # -- every node: reports -------------------------------------------------------------------

    async def report_loop(self) -> None:
        node = self.node
        while not node.stopping:
            await self._outbox_ready.wait()
            await asyncio.sleep(REPORT_BATCH)
            self._outbox_ready.clear()
            batch, self._outbox = compact(self._outbox), []
            if not batch:
                continue
            try:
                if node.is_manager:
                    await self.submit_task_status(batch)
                else:
                    await node.ask_managers(
                        "task_report", {"node_id": node.node_id, "updates": batch}
                    )
            except (MeshkitError, OSError) as exc:
                log.warning("task reports not delivered (%d kept): %s", len(batch), exc)
                self._outbox[:0] = batch
                self._outbox_ready.set()
                await asyncio.sleep(1.0)

    # -- managers: committing reports ----------------------------------------------------------

    async def submit_task_status(self, updates: list[dict[str, Any]]) -> None:
        """Commit node reports; batches of every node go in one raft entry."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_batch.extend(updates)
        self._commit_waiters.append(fut)
        self._commit_kick.set()
        await fut

    async def commit_loop(self) -> None:
        while not self.node.stopping:
            await self._commit_kick.wait()
            await asyncio.sleep(REPORT_BATCH)
            self._commit_kick.clear()
            batch, self._commit_batch = compact(self._commit_batch), []
            waiters, self._commit_waiters = self._commit_waiters, []
            if not batch:
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
                continue
            try:
                if not self.node.is_manager:
                    raise RpcError("not_manager", "this node is no longer a manager")
                await self.node.submit({"op": "task_status", "updates": batch, "now": time.time()})
            except (MeshkitError, OSError) as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(
                            exc if isinstance(exc, MeshkitError) else MeshkitError(str(exc))
                        )
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)
