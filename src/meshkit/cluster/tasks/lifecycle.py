"""The life of one task: accepted -> preparing -> starting -> running, supervised until it
exits, is stopped (SIGTERM to its group, SIGKILL after the grace period) or turns unhealthy,
then its namespace removed and one terminal state reported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.base.cancel import cancel_and_wait
from meshkit.base.procwatch import open_pidfd, wait_pidfd
from meshkit.cluster.tasks import logs as tasklogs
from meshkit.cluster.tasks import mounts as taskmounts
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks import runtime as taskruntime
from meshkit.cluster.tasks.health import (
    HealthConfig,
    HealthTracker,
    ProbeResult,
    Verdict,
    run_probe,
)
from meshkit.cluster.tasks.reporting import Reporter, TaskRun

log = logging.getLogger(__name__)

FetchFiles = Callable[[str], Awaitable[dict[str, Any]]]
"""Asks a manager for a task's secrets and configs (the task_secrets RPC) by task id."""

ERR_UNSUPERVISED = "exited while not supervised by this agent; exit code unknown"


class TaskLifecycle:
    """Launches and supervises tasks on this node; the executor decides which, this says how.

    ``overlay`` (meshkit.net.overlay.NodeOverlay) plugs tasks into networks; ``mesh``
    (meshkit.mesh.node.NodeMesh) runs the DNS server of each task on a network.
    """

    def __init__(
        self,
        hostname: str,
        reporter: Reporter,
        overlay: Any,
        mesh: Any,
        fetch_files: FetchFiles | None = None,
        data_dir: Path | None = None,
        node_id: str = "",
    ) -> None:
        self.hostname = hostname
        self.data_dir = data_dir or Path("/var/lib/meshkit")
        self.node_id = node_id
        self.reporter = reporter
        self.overlay = overlay
        self.mesh = mesh
        self.fetch_files = fetch_files

    async def task_files(self, t: TaskRun) -> list[tasknetns.TaskFile]:
        """The secrets and configs of a task, fetched from a manager now (kept in memory only,
        until the task's process holds them on its tmpfs); RuntimeError says why not."""
        spec = t.spec
        if not spec.get("secrets") and not spec.get("configs"):
            return []
        if self.fetch_files is None:
            raise RuntimeError("this node cannot fetch secrets (no manager client)")
        reply = await self.fetch_files(t.id)
        files = []
        for kind, base in (("secrets", "/run/secrets/"), ("configs", "")):
            for f in reply.get(kind) or []:
                files.append(
                    tasknetns.TaskFile(
                        path=base + str(f["target"]),
                        data=base64.b64decode(f["data"]),
                        uid=int(f["uid"]),
                        gid=int(f["gid"]),
                        mode=int(f["mode"]),
                    )
                )
        names = [str(f["name"]) for f in reply.get("secrets") or []]
        log.info("task %s: received secrets: %s", t.id, ", ".join(names) or "none")
        return files

    async def launch(self, t: TaskRun) -> bool:
        """accepted -> preparing -> starting -> running; False when it ended before running."""
        self.reporter.emit([{"id": t.id, "state": "preparing", "message": "preparing"}])
        try:
            plan = taskproc.plan_launch(t.spec, self.hostname)
        except taskproc.LaunchError as exc:
            self.reporter.save(t)
            self.reporter.finish(t, {"state": "rejected", "message": "rejected", "error": str(exc)})
            return False
        if t.spec.get("networks") or t.record.get("networks"):
            # (the routing mesh's ingress network is in the record, not the spec)
            t.netns = tasknetns.netns_name(t.id)
        # the namespace is on record before it exists, so a crash in between still reaps it
        self.reporter.save(t)
        if t.stop.is_set():
            self.reporter.finish(t, {"state": "shutdown", "message": "shutdown"})
            return False
        if t.netns is not None:
            try:
                await tasknetns.create(t.netns)
            except tasknetns.NetnsError as exc:
                await self.release(t)
                self.reporter.finish(
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
                    await self.release(t)
                    self.reporter.finish(
                        t,
                        {
                            "state": "rejected",
                            "message": "rejected",
                            "error": f"cannot attach the task to its networks: {exc}",
                        },
                    )
                    return False
            if t.stop.is_set():
                await self.release(t)
                self.reporter.finish(t, {"state": "shutdown", "message": "shutdown"})
                return False
        try:
            files = await self.task_files(t)
        except Exception as exc:
            await self.release(t)
            message = getattr(exc, "message", None) or str(exc)
            self.reporter.finish(
                t,
                {
                    "state": "rejected",
                    "message": "rejected",
                    "error": f"cannot get the task's secrets and configs: {message}",
                },
            )
            return False
        try:
            prepared = taskruntime.prepare(
                t, plan, data_dir=self.data_dir, node_id=self.node_id, node_hostname=self.hostname
            )
        except taskproc.LaunchError as exc:
            await self.release(t)
            self.reporter.finish(t, {"state": "rejected", "message": "rejected", "error": str(exc)})
            return False
        self.reporter.save(t)  # the cgroup is on record before a process is in it
        self.reporter.emit([{"id": t.id, "state": "starting", "message": "starting"}])
        fds = tasklogs.open_streams(t.dir)
        spawn = functools.partial(
            taskproc.spawn,
            prepared.plan,
            stdout=fds["stdout"],
            stderr=fds["stderr"],
            netns=t.netns,
            files=files,
            extras=prepared.extras,
        )
        try:
            if t.cgroup is None:
                t.popen = spawn()
            else:
                # joining a cgroup can make the child wait for the kernel (an RCU grace
                # period per migration): the loop goes on meanwhile, and launches overlap
                t.popen = await self.spawn_off_loop(t, spawn)
        except taskproc.LaunchError as exc:
            await self.release(t)
            self.reporter.finish(t, {"state": "rejected", "message": "rejected", "error": str(exc)})
            return False
        finally:
            for fd in fds.values():
                os.close(fd)
            del files  # the task's tmpfs holds them now; the agent keeps no copy
        t.pid = t.popen.pid
        t.start_ticks = taskproc.start_time(t.pid)
        t.started_at = time.time()
        self.reporter.save(t)
        self.reporter.emit(
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

    async def spawn_off_loop(
        self, t: TaskRun, spawn: Callable[[], subprocess.Popen[bytes]]
    ) -> subprocess.Popen[bytes]:
        """``spawn()`` in a worker thread. Cancelled meanwhile (the agent stops), the process
        starts anyway: it is put on record before the cancellation goes on, so that the next
        agent adopts it instead of losing it."""
        job = asyncio.get_running_loop().run_in_executor(None, spawn)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                t.popen = await job
                t.pid = t.popen.pid
                t.start_ticks = taskproc.start_time(t.pid)
                t.started_at = time.time()
                self.reporter.save(t)
            raise

    async def supervise(self, t: TaskRun) -> None:
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
        checks = loop.create_task(self.health(t, health)) if health is not None else None
        waits: set[asyncio.Future[Any]] = {exit_wait, stop_wait}
        if checks is not None:
            waits.add(checks)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            verdict: Verdict | None = None
            if not exit_wait.done():
                if checks is not None and checks.done() and not checks.cancelled():
                    verdict = checks.result()
                    self.reporter.emit([{"id": t.id, "state": "running", "healthy": False}])
                await self.terminate(t, exit_wait)
            else:
                # one of the two may have fired at the same moment as the exit
                if checks is not None and checks.done() and not checks.cancelled():
                    verdict = checks.result()
            stopped = t.stop.is_set() and verdict is None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # the leader is not reaped yet (a zombie), so the group id is still its own
                os.killpg(t.pid, signal.SIGKILL)
            status = reap(t.pid, t.popen)
            t.exited = True
        finally:
            for job in (stop_wait, checks, exit_wait):
                await cancel_and_wait(job)
            if pidfd is not None:
                os.close(pidfd)
        await self.release(t)
        code = None if status is None else taskproc.exit_code_of(status)
        if verdict is not None:
            self.reporter.finish(
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
            self.reporter.finish(t, {"state": "shutdown", "message": "shutdown", "exit_code": code})
        elif status is None:
            self.reporter.finish(
                t, {"state": "failed", "message": "failed", "error": ERR_UNSUPERVISED}
            )
        else:
            self.reporter.finish(t, self.exit_outcome(t, status))

    async def terminate(self, t: TaskRun, exit_wait: asyncio.Future[None]) -> None:
        """The stop signal (SIGTERM unless the spec names one) to the group, SIGKILL after the
        grace period; returns once the leader ended."""
        assert t.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(t.pid, t.stop_signal)
        await asyncio.wait({exit_wait}, timeout=t.grace)
        if not exit_wait.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(t.pid, signal.SIGKILL)
            await exit_wait

    async def health(self, t: TaskRun, config: HealthConfig) -> Verdict:
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
                # as `docker exec` would: in the task's cgroup, mounts, hostname
                own = t.pid is not None and taskmounts.has_own_namespaces(t.pid)
                extras = taskproc.ChildExtras(
                    cgroup_procs=t.cgroup.procs_files if t.cgroup is not None else [],
                    enter_pid=t.pid if own else None,
                )
                result = await run_probe(config, plan, t.netns, extras)
            verdict = tracker.feed(result, loop.time())
            if verdict is None:
                continue
            if not verdict.healthy:
                return verdict
            self.reporter.emit([{"id": t.id, "state": "running", "healthy": True}])

    def exit_outcome(self, t: TaskRun, status: int) -> dict[str, Any]:
        """complete / failed for a task that ended by itself with Popen-style ``status``."""
        code = taskproc.exit_code_of(status)
        if status == 0:
            return {"state": "complete", "message": "finished", "exit_code": 0}
        if t.oom_killed:
            error = taskruntime.oom_error(t)
            return {"state": "failed", "message": "failed", "error": error, "exit_code": code}
        data = tasklogs.read_tail_bytes(t.dir, "stderr", taskproc.STDERR_TAIL_BYTES * 4)
        error = taskproc.describe_exit(status, taskproc.tail_text(data))
        return {"state": "failed", "message": "failed", "error": error, "exit_code": code}

    def let_go(self, t: TaskRun) -> None:
        """The DNS server's sockets would keep the task's namespace alive: close them first."""
        if self.mesh is not None:
            self.mesh.task_detached(t.id)

    async def release(self, t: TaskRun) -> None:
        """What a task holds on this node once it ended: its cgroup (the OOM count read
        first) and its namespace."""
        if t.cgroup is not None:
            cg, t.cgroup = t.cgroup, None
            t.oom_killed = t.oom_killed or cg.oom_kills(killed_by_sigkill=True) > 0
            if not await asyncio.to_thread(cg.remove):
                log.warning("executor: task %s: cgroup %s not removed", t.id, cg.dirs)
        if t.netns is None:
            return
        self.let_go(t)
        try:
            await tasknetns.delete(t.netns)
        except tasknetns.NetnsError:
            log.exception("executor: task %s: cannot remove its namespace", t.id)
            return
        if self.overlay is not None:
            await self.overlay.detach(t.id)


def reap(pid: int, popen: subprocess.Popen[bytes] | None = None) -> int | None:
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
