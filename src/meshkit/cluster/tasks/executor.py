"""The node-side task executor: runs the tasks assigned to this node as processes.

The agent hands the executor the complete list of task records assigned to this node
(``sync``); the executor starts, stops and forgets tasks to match (``plan_sync`` is that
decision, sans-IO, in ``reconcile``) and reports every state change through the ``report``
callback, in the order accepted, preparing, starting, running, then one terminal state
(``lifecycle`` runs one task through those; ``reporting`` holds its state and sends updates).

A task runs as the leader of its own session (its process group), with exactly the env of
its spec over a minimal base, its workdir and user, stdin on /dev/null and stdout/stderr
appended straight to files in its state dir (see ``tasklogs``). A task with secrets or
configs gets them from a manager just before it starts (``fetch_files``: the task_secrets RPC
over mutual TLS), in memory only, and finds them on a tmpfs over /run in its own mount
namespace (/run/secrets/TARGET; configs at their target): never on this node's disk.
A task with networks gets its own network namespace (``tasknetns``), loopback only until
the overlay plugs into it.
Stopping sends SIGTERM to the group and SIGKILL after ``stop_grace_period``; when the task's
main process ends, what is left of its group and its namespace is killed and removed.

State dir per task, ``DATA_DIR/tasks/<task id>/``:

    state.json       pid, process start time (/proc/PID/stat field 22, against pid reuse),
                     started_at, the namespace it owns, the task record, and once it ended
                     the final status report
    stdout.log ...   the task's output, rotated copy-truncate (10 MiB x 3 files per stream)
    positions.json   bytes rotated out per stream, for ``logs(since=...)`` offsets
    stdout.times ... when each part of the output was written (``logtimes``), recorded
                     while the process runs from the files' sizes and mtimes

An executor started on a data dir that holds tasks (an agent restart) adopts each task whose
process still runs (same pid and start time; watched through a pidfd, since it is no longer
our child, so its exit code is usually unknown), reaps each whose process has gone (its
namespace removed; reported failed), and re-reports the final status of ended ones. Nothing
is started twice: a task id known here is never started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.cluster.tasks import cgroups as taskcgroups
from meshkit.cluster.tasks import logs as tasklogs
from meshkit.cluster.tasks import logtimes
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks.lifecycle import ERR_UNSUPERVISED, FetchFiles, TaskLifecycle, reap
from meshkit.cluster.tasks.reconcile import (
    STOP_DESIRED,
    TERMINAL_STATES,
    SyncPlan,
    plan_sync,
)
from meshkit.cluster.tasks.reporting import DEFAULT_STOP_GRACE, STATE_FILE, Reporter, TaskRun

__all__ = [
    "DEFAULT_STOP_GRACE",
    "ERR_DOWN",
    "ERR_NOT_STARTED",
    "ERR_UNSUPERVISED",
    "ROTATE_INTERVAL",
    "STATE_FILE",
    "STOP_DESIRED",
    "TASKS_DIR",
    "TERMINAL_STATES",
    "Executor",
    "SyncPlan",
    "plan_sync",
]

log = logging.getLogger(__name__)

TASKS_DIR = "tasks"
ROTATE_INTERVAL = 5.0
ERR_DOWN = "the task's process ended while the agent was down"
ERR_NOT_STARTED = "the agent stopped while the task was starting; it was never started"


class Executor:
    """Runs this node's tasks as processes; see the module docstring.

    Everything runs on the caller's event loop: await ``start()`` before the first
    ``sync()``, and ``report`` is called from the loop (also from inside ``sync``)."""

    def __init__(
        self,
        data_dir: Path,
        node_id: str,
        hostname: str,
        report: Callable[[list[dict[str, Any]]], None],
        overlay: Any = None,
        mesh: Any = None,
        fetch_files: FetchFiles | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tasks_dir = self.data_dir / TASKS_DIR
        self.node_id = node_id
        self._reporter = Reporter(report)
        self._life = TaskLifecycle(
            hostname, self._reporter, overlay, mesh, fetch_files, self.data_dir, node_id
        )
        self._tasks: dict[str, TaskRun] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._rotator: asyncio.Task[None] | None = None
        self._stamper = logtimes.Stamper()
        # log rotation: copy-truncate when a live file passes log_max_bytes, log_keep files
        # per stream in all; checked every rotate_interval seconds
        self.log_max_bytes = tasklogs.MAX_BYTES
        self.log_keep = tasklogs.KEEP_FILES
        self.rotate_interval = ROTATE_INTERVAL

    @property
    def hostname(self) -> str:
        """The node's hostname, as tasks see it."""
        return self._life.hostname

    @property
    def overlay(self) -> Any:
        """meshkit.net.overlay.NodeOverlay: plugs tasks into networks (None: no networks)."""
        return self._life.overlay

    @property
    def mesh(self) -> Any:
        """meshkit.mesh.node.NodeMesh: the DNS server of each task on a network (or None)."""
        return self._life.mesh

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the live tasks the data dir holds, reap the dead ones, report them all."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._rotator is None:
            self._stamper.start()
        updates: list[dict[str, Any]] = []
        for task_dir in sorted(self.tasks_dir.iterdir()):
            if task_dir.is_dir() and task_dir.name not in self._tasks:
                update = await self._recover(task_dir)
                if update is not None:
                    updates.append(update)
        self._reporter.emit(updates)
        if self._rotator is None:
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_forever())

    def sync(self, tasks: list[dict[str, Any]]) -> None:
        """Make this node run what ``tasks`` (all task records assigned to it) asks for."""
        active = {task_id: t.final is None for task_id, t in self._tasks.items()}
        plan = plan_sync(active, tasks)
        for task in tasks:
            known = self._tasks.get(str(task["id"]))
            if known is not None:
                known.record = dict(task)
                known.forget = False
        updates: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        for record in plan.start:
            t = TaskRun(id=str(record["id"]), record=record, dir=self.tasks_dir / str(record["id"]))
            self._tasks[t.id] = t
            updates.append({"id": t.id, "state": "accepted", "message": "accepted"})
            t.supervisor = loop.create_task(self._run(t, adopted=False))
        for task_id in plan.stop:
            self._tasks[task_id].stop.set()
        for task_id in plan.forget:
            t = self._tasks[task_id]
            t.forget = True
            if t.final is None:
                t.stop.set()
            elif t.supervisor is None or t.supervisor.done():
                self._drop(t)
        self._reporter.emit(updates)

    def logs(
        self,
        task_id: str,
        tail: int | None = None,
        since: dict[str, int] | None = None,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        timestamps: bool = False,
    ) -> dict[str, Any]:
        """The task's output: all kept lines, the last ``tail`` per stream, or those after the
        ``since`` of an earlier call. KeyError for a task not known here. With times asked
        for (written from ``since_ns``, up to ``until_ns``, or ``timestamps``), the streams
        come merged in time order and each line is [stream, text, time ns]."""
        t = self._tasks[task_id]
        if since_ns is not None or until_ns is not None or timestamps:
            return self._timed_logs(t, tail, since, since_ns, until_ns)
        lines: list[list[str]] = []
        positions: dict[str, int] = {}
        for stream in tasklogs.STREAMS:
            start = None if since is None else int(since.get(stream, 0))
            got, end = tasklogs.read_stream(
                t.dir, stream, tail=tail, since=start, complete_only=t.live
            )
            lines.extend([stream, line] for line in got)
            positions[stream] = end
        return {"lines": lines, "since": positions}

    def _timed_logs(
        self,
        t: TaskRun,
        tail: int | None,
        since: dict[str, int] | None,
        since_ns: int | None,
        until_ns: int | None,
    ) -> dict[str, Any]:
        lines: list[tuple[int, int, str, str]] = []
        positions: dict[str, int] = {}
        for order, stream in enumerate(tasklogs.STREAMS):
            got = logtimes.read_timed(
                t.dir,
                stream,
                tail=tail,
                since=None if since is None else int(since.get(stream, 0)),
                complete_only=t.live,
                since_ns=None if since is not None else since_ns,
                until_ns=until_ns,
            )
            lines.extend((when, order, stream, text) for when, text in got.lines)
            positions[stream] = got.end
        lines.sort(key=lambda x: (x[0], x[1]))  # stable: a stream's own order is kept
        if tail is not None:
            # the task's last lines, both streams together (each stream read only its last)
            lines = lines[-tail:] if tail else []
        return {
            "lines": [[stream, text, when] for when, _, stream, text in lines],
            "since": positions,
        }

    def secrets_held(self) -> dict[str, list[str]]:
        """The secrets this node holds: those of its live tasks (each on the task's own
        tmpfs), by name -> task ids. A node without such a task holds none."""
        held: dict[str, list[str]] = {}
        for task_id, t in sorted(self._tasks.items()):
            if t.live:
                for ref in t.spec.get("secrets") or []:
                    held.setdefault(str(ref.get("source")), []).append(task_id)
        return held

    def volume_users(self) -> dict[str, list[str]]:
        """Volumes the tasks this node knows mount: name -> task ids. Ended tasks count until
        the cluster forgets them (as Docker counts stopped containers), so that a volume is
        not removed under a service whose next task would want it."""
        users: dict[str, list[str]] = {}
        for task_id, t in sorted(self._tasks.items()):
            if not t.forget:
                for m in t.spec.get("mounts") or []:
                    if m.get("type") == "volume":
                        users.setdefault(str(m.get("source")), []).append(task_id)
        return users

    def running(self) -> list[str]:
        """Ids of the tasks whose process is alive."""
        return [task_id for task_id, t in self._tasks.items() if t.live]

    async def close(self, stop_tasks: bool) -> None:
        """Stop supervising. stop_tasks=False leaves the processes running for the next agent
        to adopt; True stops every task and removes every namespace."""
        if self._rotator is not None:
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotator
            self._rotator = None
            self._stamper.close()
        supervisors = [t.supervisor for t in self._tasks.values() if t.supervisor is not None]
        if stop_tasks:
            for t in self._tasks.values():
                t.stop.set()
            await asyncio.gather(*supervisors, return_exceptions=True)
            for t in self._tasks.values():
                await self._life.release(t)
        else:
            for sup in supervisors:
                sup.cancel()
            await asyncio.gather(*supervisors, return_exceptions=True)
        for job in list(self._background):
            with contextlib.suppress(Exception):
                await job

    async def rotate_logs(self) -> list[tuple[str, str]]:
        """Rotate the logs of running tasks that are over the size now; (task id, stream)s."""
        done: list[tuple[str, str]] = []
        for t in list(self._tasks.values()):
            if t.live and (self._over_size(t) or self._stamper.needs_prune(t.id)):
                # the times' base moves with a rotation: their records wait for it
                self._stamper.pause(t.id)
                try:
                    rotated = await asyncio.to_thread(self._rotate_one, t)
                finally:
                    self._stamper.resume(t.id)
                done.extend((t.id, stream) for stream in rotated)
        return done

    def _over_size(self, t: TaskRun) -> bool:
        for stream in tasklogs.STREAMS:
            with contextlib.suppress(OSError):
                if tasklogs.log_path(t.dir, stream).stat().st_size > self.log_max_bytes:
                    return True
        return False

    def _rotate_one(self, t: TaskRun) -> list[str]:
        rotated = tasklogs.rotate(t.dir, self.log_max_bytes, self.log_keep)
        for stream in tasklogs.STREAMS:
            if stream in rotated or self._stamper.needs_prune(t.id):
                logtimes.Stamper.prune(t.dir, stream)
        return rotated

    # -- forgetting -------------------------------------------------------------------------

    def _drop(self, t: TaskRun) -> None:
        """Forget a task that has ended: its state dir goes."""
        if self._tasks.get(t.id) is t:
            del self._tasks[t.id]
        job = asyncio.get_running_loop().create_task(asyncio.to_thread(shutil.rmtree, t.dir, True))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    # -- recovery after an agent restart ----------------------------------------------------

    async def _recover(self, task_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((task_dir / STATE_FILE).read_text())
            record = data["record"]
            if not isinstance(record, dict) or str(record.get("id")) != task_dir.name:
                raise ValueError("record does not match the directory")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # made but never described (or damaged): only its namespace can be known, by name
            log.warning("executor: dropping task dir %s: %s", task_dir, exc)
            with contextlib.suppress(tasknetns.NetnsError):
                await tasknetns.delete(tasknetns.netns_name(task_dir.name))
            leftover = taskcgroups.of_task(task_dir.name)
            if leftover is not None:
                await asyncio.to_thread(leftover.remove)
            await asyncio.to_thread(shutil.rmtree, task_dir, True)
            return None
        t = TaskRun(id=task_dir.name, record=record, dir=task_dir)
        t.netns = data.get("netns")
        t.pid = data.get("pid")
        t.start_ticks = data.get("start_ticks")
        t.started_at = data.get("started_at")
        t.cgroup = taskcgroups.TaskCgroup.from_dict(data.get("cgroup"))
        self._tasks[t.id] = t
        final = data.get("final")
        if isinstance(final, dict):
            t.final = final
            t.exited = True
            return final
        if (
            t.pid is not None
            and t.start_ticks is not None
            and taskproc.start_time(t.pid) == t.start_ticks
        ):
            t.supervisor = asyncio.get_running_loop().create_task(self._run(t, adopted=True))
            if t.netns is not None and self.mesh is not None:
                await self.mesh.task_attached(t.id, t.netns)  # its DNS server, again
            update: dict[str, Any] = {
                "id": t.id,
                "state": "running",
                "message": "started",
                "pid": t.pid,
            }
            if t.started_at is not None:
                update["started_at"] = t.started_at
            return update
        # the process is gone (or never started): take down what is left of it
        t.exited = True
        status = None
        if t.pid is not None and taskproc.start_time(t.pid) is None:
            # no live process holds this pid: only orphans of the task's group can hold the
            # group id, so signalling it cannot reach anyone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(t.pid, signal.SIGKILL)
            status = reap(t.pid)
        await self._life.release(t)
        if status is not None:
            outcome = self._life.exit_outcome(t, status)
        elif t.pid is None:
            outcome = {"state": "failed", "message": "failed", "error": ERR_NOT_STARTED}
        else:
            outcome = {"state": "failed", "message": "failed", "error": ERR_DOWN}
        t.final = {"id": t.id, **outcome}
        with contextlib.suppress(OSError):
            self._reporter.save(t)
        return t.final

    # -- the life of one task (see ``lifecycle``) --------------------------------------------

    async def _run(self, t: TaskRun, adopted: bool) -> None:
        try:
            if adopted or await self._life.launch(t):
                self._stamper.watch(t.id, t.dir)
                try:
                    await self._life.supervise(t)
                finally:
                    self._stamper.unwatch(t.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("executor: task %s", t.id)
            if t.final is None:
                if t.pid is not None and not t.exited:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(t.pid, signal.SIGKILL)
                    if t.popen is not None:
                        t.popen.wait()
                    t.exited = True
                await self._life.release(t)
                self._reporter.finish(
                    t, {"state": "failed", "message": "failed", "error": f"executor error: {exc}"}
                )
        finally:
            if t.forget and t.final is not None:
                self._drop(t)

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rotate_interval)
            try:
                await self.rotate_logs()
            except OSError:
                log.exception("executor: log rotation failed")
