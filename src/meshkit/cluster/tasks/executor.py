"""The node-side task executor: runs the tasks assigned to this node as processes.

The agent hands the executor the complete list of task records assigned to this node
(``sync``); the executor starts, stops and forgets tasks to match (``plan_sync`` is that
decision, sans-IO) and reports every state change through the ``report`` callback, in the
order accepted, preparing, starting, running, then one terminal state.

A task runs as the leader of its own session (its process group), with exactly the env of
its spec over a minimal base, its workdir and user, stdin on /dev/null and stdout/stderr
appended straight to files in its state dir (see ``tasklogs``). A task with networks gets
its own network namespace (``tasknetns``), loopback only until the overlay plugs into it.
Stopping sends SIGTERM to the group and SIGKILL after ``stop_grace_period``; when the task's
main process ends, what is left of its group and its namespace is killed and removed.

State dir per task, ``DATA_DIR/tasks/<task id>/``:

    state.json       pid, process start time (/proc/PID/stat field 22, against pid reuse),
                     started_at, the namespace it owns, the task record, and once it ended
                     the final status report
    stdout.log ...   the task's output, rotated copy-truncate (10 MiB x 3 files per stream)
    positions.json   bytes rotated out per stream, for ``logs(since=...)`` offsets

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
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.base.files import write_private
from meshkit.base.procwatch import open_pidfd, wait_pidfd
from meshkit.cluster.model.services import TERMINAL
from meshkit.cluster.tasks import logs as tasklogs
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks.health import (
    HealthConfig,
    HealthTracker,
    ProbeResult,
    Verdict,
    run_probe,
)

log = logging.getLogger(__name__)

TASKS_DIR = "tasks"
STATE_FILE = "state.json"
TERMINAL_STATES = TERMINAL  # swarm's end states, as the cluster state defines them
STOP_DESIRED = frozenset({"shutdown", "remove"})
DEFAULT_STOP_GRACE = 10.0
ROTATE_INTERVAL = 5.0
ERR_DOWN = "the task's process ended while the agent was down"
ERR_NOT_STARTED = "the agent stopped while the task was starting; it was never started"
ERR_UNSUPERVISED = "exited while not supervised by this agent; exit code unknown"


@dataclass(frozen=True)
class SyncPlan:
    """What ``sync`` must do: records to start, ids to stop, ids to stop (if needed) and forget."""

    start: list[dict[str, Any]]
    stop: list[str]
    forget: list[str]


def plan_sync(active: Mapping[str, bool], tasks: Iterable[Mapping[str, Any]]) -> SyncPlan:
    """Decide from the tasks known here (id -> still active, i.e. not ended) and the complete
    list assigned to this node. Unknown tasks desired running and not already terminal start;
    known active ones desired shutdown/remove stop; known ones missing from the list go."""
    listed: dict[str, Mapping[str, Any]] = {}
    for task in tasks:
        listed[str(task["id"])] = task
    start: list[dict[str, Any]] = []
    stop: list[str] = []
    for task_id, task in listed.items():
        desired = task.get("desired_state")
        if task_id not in active:
            if desired == "running" and task.get("state") not in TERMINAL_STATES:
                start.append(dict(task))
        elif desired in STOP_DESIRED and active[task_id]:
            stop.append(task_id)
    forget = [task_id for task_id in active if task_id not in listed]
    return SyncPlan(start, stop, forget)


@dataclass
class _Task:
    """What the executor holds about one task."""

    id: str
    record: dict[str, Any]
    dir: Path
    netns: str | None = None
    pid: int | None = None
    start_ticks: int | None = None
    started_at: float | None = None
    popen: subprocess.Popen[bytes] | None = None
    exited: bool = False
    final: dict[str, Any] | None = None
    forget: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: asyncio.Task[None] | None = None

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.record.get("spec") or {}
        return spec if isinstance(spec, dict) else {}

    @property
    def grace(self) -> float:
        value = self.spec.get("stop_grace_period")
        return DEFAULT_STOP_GRACE if value is None else max(0.0, float(value))

    @property
    def live(self) -> bool:
        return self.pid is not None and not self.exited and self.final is None


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.overlay = overlay  # meshkit.net.overlay.NodeOverlay: plugs tasks into networks
        self.mesh = mesh  # meshkit.mesh.node.NodeMesh: the DNS server of each task on a network
        self.tasks_dir = self.data_dir / TASKS_DIR
        self.node_id = node_id
        self.hostname = hostname
        self._report = report
        self._tasks: dict[str, _Task] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._rotator: asyncio.Task[None] | None = None
        # log rotation: copy-truncate when a live file passes log_max_bytes, log_keep files
        # per stream in all; checked every rotate_interval seconds
        self.log_max_bytes = tasklogs.MAX_BYTES
        self.log_keep = tasklogs.KEEP_FILES
        self.rotate_interval = ROTATE_INTERVAL

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the live tasks the data dir holds, reap the dead ones, report them all."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        updates: list[dict[str, Any]] = []
        for task_dir in sorted(self.tasks_dir.iterdir()):
            if task_dir.is_dir() and task_dir.name not in self._tasks:
                update = await self._recover(task_dir)
                if update is not None:
                    updates.append(update)
        self._emit(updates)
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
            t = _Task(id=str(record["id"]), record=record, dir=self.tasks_dir / str(record["id"]))
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
        self._emit(updates)

    def logs(
        self, task_id: str, tail: int | None = None, since: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The task's output: all kept lines, the last ``tail`` per stream, or those after the
        ``since`` of an earlier call. KeyError for a task not known here."""
        t = self._tasks[task_id]
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
        supervisors = [t.supervisor for t in self._tasks.values() if t.supervisor is not None]
        if stop_tasks:
            for t in self._tasks.values():
                t.stop.set()
            await asyncio.gather(*supervisors, return_exceptions=True)
            for t in self._tasks.values():
                await self._remove_netns(t)
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
            if t.live:
                for stream in await asyncio.to_thread(
                    tasklogs.rotate, t.dir, self.log_max_bytes, self.log_keep
                ):
                    done.append((t.id, stream))
        return done

    # -- reporting and persistence ----------------------------------------------------------

    def _emit(self, updates: list[dict[str, Any]]) -> None:
        if not updates:
            return
        try:
            self._report(updates)
        except Exception:
            log.exception("executor: the report callback failed for %d updates", len(updates))

    def _save(self, t: _Task) -> None:
        data = {
            "id": t.id,
            "pid": t.pid,
            "start_ticks": t.start_ticks,
            "started_at": t.started_at,
            "netns": t.netns,
            "record": t.record,
            "final": t.final,
        }
        t.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(t.dir / STATE_FILE, json.dumps(data))

    def _finish(self, t: _Task, update: dict[str, Any]) -> None:
        """Record and report the terminal state of ``t``."""
        update = {"id": t.id, **update}
        t.final = update
        with contextlib.suppress(OSError):
            self._save(t)
        self._emit([update])

    def _drop(self, t: _Task) -> None:
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
            await asyncio.to_thread(shutil.rmtree, task_dir, True)
            return None
        t = _Task(id=task_dir.name, record=record, dir=task_dir)
        t.netns = data.get("netns")
        t.pid = data.get("pid")
        t.start_ticks = data.get("start_ticks")
        t.started_at = data.get("started_at")
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
            status = _reap(t.pid)
        await self._remove_netns(t)
        if status is not None:
            outcome = self._exit_outcome(t, status)
        elif t.pid is None:
            outcome = {"state": "failed", "message": "failed", "error": ERR_NOT_STARTED}
        else:
            outcome = {"state": "failed", "message": "failed", "error": ERR_DOWN}
        t.final = {"id": t.id, **outcome}
        with contextlib.suppress(OSError):
            self._save(t)
        return t.final

    # -- the life of one task ---------------------------------------------------------------

    async def _run(self, t: _Task, adopted: bool) -> None:
        try:
            if adopted or await self._launch(t):
                await self._supervise(t)
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
                await self._remove_netns(t)
                self._finish(
                    t, {"state": "failed", "message": "failed", "error": f"executor error: {exc}"}
                )
        finally:
            if t.forget and t.final is not None:
                self._drop(t)

    async def _launch(self, t: _Task) -> bool:
        """accepted -> preparing -> starting -> running; False when it ended before running."""
        self._emit([{"id": t.id, "state": "preparing", "message": "preparing"}])
        try:
            plan = taskproc.plan_launch(t.spec, self.hostname)
        except taskproc.LaunchError as exc:
            self._save(t)
            self._finish(t, {"state": "rejected", "message": "rejected", "error": str(exc)})
            return False
        if t.spec.get("networks") or t.record.get("networks"):
            # (the routing mesh's ingress network is in the record, not the spec)
            t.netns = tasknetns.netns_name(t.id)
        # the namespace is on record before it exists, so a crash in between still reaps it
        self._save(t)
        if t.stop.is_set():
            self._finish(t, {"state": "shutdown", "message": "shutdown"})
            return False
        if t.netns is not None:
            try:
                await tasknetns.create(t.netns)
            except tasknetns.NetnsError as exc:
                await self._remove_netns(t)
                self._finish(
                    t,
                    {
                        "state": "rejected",
                        "message": "rejected",
                        "error": f"cannot make the task's network namespace: {exc}",
                    },
                )
                return False
            attachments = list(t.record.get("networks") or [])
            if attachments and self.overlay is not None:
                from meshkit.net.overlay import OverlayError

                try:
                    await self.overlay.attach(t.id, t.netns, attachments)
                    if self.mesh is not None:
                        await self.mesh.task_attached(t.id, t.netns)
                except OverlayError as exc:
                    await self._remove_netns(t)
                    self._finish(
                        t,
                        {
                            "state": "rejected",
                            "message": "rejected",
                            "error": f"cannot attach the task to its networks: {exc}",
                        },
                    )
                    return False
            if t.stop.is_set():
                await self._remove_netns(t)
                self._finish(t, {"state": "shutdown", "message": "shutdown"})
                return False
        self._emit([{"id": t.id, "state": "starting", "message": "starting"}])
        fds = tasklogs.open_streams(t.dir)
        try:
            t.popen = taskproc.spawn(
                plan, stdout=fds["stdout"], stderr=fds["stderr"], netns=t.netns
            )
        except taskproc.LaunchError as exc:
            await self._remove_netns(t)
            self._finish(t, {"state": "rejected", "message": "rejected", "error": str(exc)})
            return False
        finally:
            for fd in fds.values():
                os.close(fd)
        t.pid = t.popen.pid
        t.start_ticks = taskproc.start_time(t.pid)
        t.started_at = time.time()
        self._save(t)
        self._emit(
            [
                {
                    "id": t.id,
                    "state": "running",
                    "message": "started",
                    "pid": t.pid,
                    "started_at": t.started_at,
                }
            ]
        )
        return True

    async def _supervise(self, t: _Task) -> None:
        """Wait for the end (exit, stop request, unhealthy), then clean up and report it."""
        assert t.pid is not None
        loop = asyncio.get_running_loop()
        pidfd = open_pidfd(t.pid)
        exit_wait: asyncio.Future[None]
        if pidfd is None:
            exit_wait = loop.create_future()
            exit_wait.set_result(None)
        else:
            exit_wait = loop.create_task(wait_pidfd(pidfd))
        stop_wait = loop.create_task(t.stop.wait())
        health = HealthConfig.from_spec(t.spec.get("health"))
        checks = loop.create_task(self._health(t, health)) if health is not None else None
        waits: set[asyncio.Future[Any]] = {exit_wait, stop_wait}
        if checks is not None:
            waits.add(checks)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            verdict: Verdict | None = None
            if not exit_wait.done():
                if checks is not None and checks.done() and not checks.cancelled():
                    verdict = checks.result()
                    self._emit([{"id": t.id, "state": "running", "healthy": False}])
                await self._terminate(t, exit_wait)
            else:
                # one of the two may have fired at the same moment as the exit
                if checks is not None and checks.done() and not checks.cancelled():
                    verdict = checks.result()
            stopped = t.stop.is_set() and verdict is None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # the leader is not reaped yet (a zombie), so the group id is still its own
                os.killpg(t.pid, signal.SIGKILL)
            status = _reap(t.pid, t.popen)
            t.exited = True
        finally:
            for job in (stop_wait, checks, exit_wait):
                if job is not None and not job.done():
                    job.cancel()
            for job in (stop_wait, checks, exit_wait):
                if job is not None:
                    with contextlib.suppress(BaseException):
                        await job
            if pidfd is not None:
                os.close(pidfd)
        await self._remove_netns(t)
        code = None if status is None else taskproc.exit_code_of(status)
        if verdict is not None:
            self._finish(
                t,
                {
                    "state": "failed",
                    "message": "unhealthy",
                    "error": verdict.error,
                    "exit_code": code,
                    "healthy": False,
                },
            )
        elif stopped:
            self._finish(t, {"state": "shutdown", "message": "shutdown", "exit_code": code})
        elif status is None:
            self._finish(t, {"state": "failed", "message": "failed", "error": ERR_UNSUPERVISED})
        else:
            self._finish(t, self._exit_outcome(t, status))

    async def _terminate(self, t: _Task, exit_wait: asyncio.Future[None]) -> None:
        """SIGTERM to the group, SIGKILL after the grace period; returns once the leader ended."""
        assert t.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(t.pid, signal.SIGTERM)
        await asyncio.wait({exit_wait}, timeout=t.grace)
        if not exit_wait.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(t.pid, signal.SIGKILL)
            await exit_wait

    async def _health(self, t: _Task, config: HealthConfig) -> Verdict:
        """Probe every interval until the task is unhealthy; reports the first success."""
        loop = asyncio.get_running_loop()
        elapsed = 0.0 if t.started_at is None else max(0.0, time.time() - t.started_at)
        tracker = HealthTracker(config, loop.time() - elapsed)
        plan: taskproc.LaunchPlan | None = None
        while True:
            await asyncio.sleep(config.interval)
            try:
                plan = plan or taskproc.plan_shell(t.spec, self.hostname, config.cmd)
            except taskproc.LaunchError as exc:
                # e.g. the user was removed after an agent restart: the check cannot run
                result = ProbeResult(False, f"could not run the check: {exc}")
            else:
                result = await run_probe(config, plan, t.netns)
            verdict = tracker.feed(result, loop.time())
            if verdict is None:
                continue
            if not verdict.healthy:
                return verdict
            self._emit([{"id": t.id, "state": "running", "healthy": True}])

    def _exit_outcome(self, t: _Task, status: int) -> dict[str, Any]:
        """complete / failed for a task that ended by itself with Popen-style ``status``."""
        code = taskproc.exit_code_of(status)
        if status == 0:
            return {"state": "complete", "message": "finished", "exit_code": 0}
        data = tasklogs.read_tail_bytes(t.dir, "stderr", taskproc.STDERR_TAIL_BYTES * 4)
        error = taskproc.describe_exit(status, taskproc.tail_text(data))
        return {"state": "failed", "message": "failed", "error": error, "exit_code": code}

    def _let_go(self, t: _Task) -> None:
        """The DNS server's sockets would keep the task's namespace alive: close them first."""
        if self.mesh is not None:
            self.mesh.task_detached(t.id)

    async def _remove_netns(self, t: _Task) -> None:
        if t.netns is None:
            return
        self._let_go(t)
        try:
            await tasknetns.delete(t.netns)
        except tasknetns.NetnsError:
            log.exception("executor: task %s: cannot remove its namespace", t.id)

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rotate_interval)
            try:
                await self.rotate_logs()
            except OSError:
                log.exception("executor: log rotation failed")


def _reap(pid: int, popen: subprocess.Popen[bytes] | None = None) -> int | None:
    """The exit status (Popen style: -N for signal N) of an ended process, when it is our
    child; None when another process (init, after an agent restart) reaps it."""
    if popen is not None:
        return popen.wait()
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
