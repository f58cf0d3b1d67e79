"""The task executor with real processes, namespaces and files (needs root).

Every test runs its own uvloop loop, gives the executor real commands (sleep, sh, ip) and
closes it with stop_tasks=True in a finally block; the ``cleanup`` fixture then kills any
process a test recorded and deletes any namespace of its task ids, also when it failed.
Waits poll for a report with a generous deadline; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from meshkit.base import netns as tasknetns
from meshkit.cluster.api.common import new_node_id
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks.executor import ERR_DOWN, ERR_NOT_STARTED, Executor

pytestmark = pytest.mark.root

DEADLINE = 20.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


class Lab:
    """What a test made: executors, task ids, pids to kill at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: list[str] = []
        # (pid, start time): the cleanup signals only the very processes the test saw
        self.pids: list[tuple[int, int | None]] = []
        self.reports: list[dict[str, Any]] = []

    def new_id(self) -> str:
        task_id = new_node_id()
        self.ids.append(task_id)
        return task_id

    def executor(self, data: str = "data") -> Executor:
        return Executor(self.root / data, "node1", "host-a", self.reports.extend)

    def record(self, task_id: str, command: list[str], **spec: Any) -> dict[str, Any]:
        return {
            "id": task_id,
            "service_id": "svc",
            "service_name": "web",
            "slot": 1,
            "node_id": "node1",
            "desired_state": "running",
            "state": "assigned",
            "spec": {"command": command, **spec},
        }

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["id"] == task_id]

    def states(self, task_id: str) -> list[str]:
        out: list[str] = []
        for r in self.of(task_id):
            if not out or out[-1] != r["state"]:
                out.append(r["state"])
        return out

    def last(self, task_id: str) -> dict[str, Any]:
        return self.of(task_id)[-1]

    def pid(self, task_id: str) -> int:
        pid = int(next(r["pid"] for r in self.of(task_id) if r.get("pid")))
        self.keep(pid)
        return pid

    def keep(self, pid: int) -> None:
        self.pids.append((pid, taskproc.start_time(pid)))

    async def until(self, check: Callable[[], object], what: str) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while not check():
            if loop.time() > end:
                raise AssertionError(f"timed out waiting for {what}; reports: {self.reports}")
            await asyncio.sleep(0.02)

    async def reaches(self, task_id: str, state: str) -> dict[str, Any]:
        await self.until(
            lambda: any(r["state"] == state for r in self.of(task_id)), f"{task_id} {state}"
        )
        return next(r for r in self.of(task_id) if r["state"] == state)

    async def ended(self, task_id: str) -> dict[str, Any]:
        terminal = {"complete", "failed", "shutdown", "rejected"}
        await self.until(lambda: self.states(task_id)[-1:] in ([s] for s in terminal), "end")
        return self.last(task_id)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the executor tests need root and iproute2")
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        for pid, ticks in made.pids:
            if ticks is not None and taskproc.start_time(pid) == ticks:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for task_id in made.ids:
            name = tasknetns.netns_name(task_id)
            if tasknetns.netns_path(name).exists():
                tasknetns.kill_inside(name)
                subprocess.run(["ip", "netns", "del", name], check=False)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(body())


async def _with(ex: Executor, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    await ex.start()
    try:
        await body()
    finally:
        await ex.close(stop_tasks=True)


# -- lifecycle ----------------------------------------------------------------------------


def test_start_and_stop_a_sleep(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    rec = lab.record(tid, ["sleep", "60"])

    async def body() -> None:
        ex.sync([rec])
        running = await lab.reaches(tid, "running")
        pid = lab.pid(tid)
        assert running["started_at"] > 0 and running["message"] == "started"
        assert ex.running() == [tid]
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        ex.sync([rec])  # idempotent: nothing new
        ex.sync([{**rec, "desired_state": "shutdown"}])
        final = await lab.ended(tid)
        assert final["state"] == "shutdown" and final["message"] == "shutdown"
        assert final["exit_code"] == 128 + signal.SIGTERM
        assert not _alive(pid)
        assert ex.running() == []
        assert lab.states(tid) == [
            "accepted", "preparing", "starting", "running", "shutdown"
        ]  # fmt: skip
        assert len([r for r in lab.of(tid) if r["state"] == "accepted"]) == 1

    run(lambda: _with(ex, body))


def test_sigkill_after_grace_when_sigterm_is_ignored(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    # an ignored signal stays ignored across exec, so sleep ignores SIGTERM too
    cmd = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"]
    rec = lab.record(tid, cmd, stop_grace_period=0.3)

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(tid, "running")
        pid = lab.pid(tid)
        await lab.until(lambda: ex.logs(tid)["lines"] == [["stdout", "ready"]], "ready")
        ex.sync([{**rec, "desired_state": "remove"}])
        final = await lab.ended(tid)
        assert final["state"] == "shutdown"
        assert final["exit_code"] == 128 + signal.SIGKILL
        assert not _alive(pid)

    run(lambda: _with(ex, body))


def test_stop_kills_the_whole_group_and_leftovers_die_with_the_task(
    lab: Lab, tmp_path: Path
) -> None:
    ex = lab.executor()
    t1, t2 = lab.new_id(), lab.new_id()
    child1, child2 = tmp_path / "child1", tmp_path / "child2"
    rec1 = lab.record(t1, ["sh", "-c", f"sleep 60 & echo $! > {child1}; wait"])
    # t2's main process ends at once, leaving a background child behind
    rec2 = lab.record(
        t2, ["sh", "-c", f"sleep 60 & echo $! > {child2}.tmp; mv {child2}.tmp {child2}"]
    )

    async def body() -> None:
        ex.sync([rec1, rec2])
        await lab.until(lambda: child1.exists() and child1.read_text().strip(), "child pid")
        pid1 = int(child1.read_text())
        lab.keep(pid1)
        assert _alive(pid1)
        final2 = await lab.ended(t2)
        assert final2["state"] == "complete" and final2["message"] == "finished"
        pid2 = int(child2.read_text())
        assert not _alive(pid2)
        ex.sync([{**rec1, "desired_state": "shutdown"}, rec2])
        await lab.ended(t1)
        assert not _alive(pid1)

    run(lambda: _with(ex, body))


def test_env_workdir_and_user(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    work = tmp_path / "work"
    work.mkdir()
    rec = lab.record(
        tid,
        ["sh", "-c", "id -u; id -g; pwd; env | sort; test -t 0 || cat"],
        env=["GREETING=hello world", "HOME=/custom"],
        workdir=str(work),
        user="nobody",
    )

    async def body() -> None:
        ex.sync([rec])
        final = await lab.ended(tid)
        assert final["state"] == "complete", final
        lines = [text for stream, text in ex.logs(tid)["lines"] if stream == "stdout"]
        assert lines[:3] == ["65534", str(pwd.getpwnam("nobody").pw_gid), str(work)]
        env = dict(line.split("=", 1) for line in lines[3:])
        env.pop("PWD", None)
        env.pop("SHLVL", None)
        env.pop("_", None)
        assert env == {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": "host-a",
            "HOME": "/custom",
            "GREETING": "hello world",
        }

    run(lambda: _with(ex, body))


def test_exit_codes_and_stderr_in_the_error(lab: Lab) -> None:
    ex = lab.executor()
    ok, bad, killed = lab.new_id(), lab.new_id(), lab.new_id()
    noisy = 'for i in 1 2 3 4 5 6 7; do echo "problem $i" >&2; done; echo out; exit 3'
    recs = [
        lab.record(ok, ["true"]),
        lab.record(bad, ["sh", "-c", noisy]),
        lab.record(killed, ["sh", "-c", "kill -KILL $$"]),
    ]

    async def body() -> None:
        ex.sync(recs)
        assert (await lab.ended(ok)) == {
            "id": ok, "state": "complete", "message": "finished", "exit_code": 0
        }  # fmt: skip
        failed = await lab.ended(bad)
        assert failed["state"] == "failed" and failed["exit_code"] == 3
        assert failed["error"] == (
            "exited with code 3: problem 3\nproblem 4\nproblem 5\nproblem 6\nproblem 7"
        )
        sig = await lab.ended(killed)
        assert sig["state"] == "failed"
        assert sig["error"] == "exited on signal SIGKILL"
        assert sig["exit_code"] == 137
        # ended tasks stay known (not restarted) while the list still holds them
        ex.sync([{**r, "state": "running"} for r in recs])
        await asyncio.sleep(0.1)
        assert len([r for r in lab.reports if r["state"] == "accepted"]) == 3

    run(lambda: _with(ex, body))


def test_cannot_start_is_rejected_in_plain_words(lab: Lab) -> None:
    ex = lab.executor()
    a, b, c = lab.new_id(), lab.new_id(), lab.new_id()

    async def body() -> None:
        ex.sync(
            [
                lab.record(a, ["ngnix", "-g", "daemon off;"]),
                lab.record(b, ["true"], workdir="/no/such/dir"),
                lab.record(c, ["true"], user="no-such-user"),
            ]
        )
        ra, rb, rc = await lab.ended(a), await lab.ended(b), await lab.ended(c)
        assert ra["state"] == "rejected" and ra["error"] == "exec: 'ngnix': not found in PATH"
        assert rb["state"] == "rejected" and "workdir '/no/such/dir'" in rb["error"]
        assert rc["state"] == "rejected" and "no-such-user" in rc["error"]
        assert lab.states(a) == ["accepted", "preparing", "rejected"]
        assert ex.running() == []

    run(lambda: _with(ex, body))


def test_absent_task_is_stopped_and_forgotten(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()

    async def body() -> None:
        ex.sync([lab.record(tid, ["sleep", "60"])])
        await lab.reaches(tid, "running")
        pid = lab.pid(tid)
        task_dir = ex.tasks_dir / tid
        assert task_dir.is_dir()
        ex.sync([])
        await lab.ended(tid)
        assert not _alive(pid)
        await lab.until(lambda: not task_dir.exists(), "task dir removed")
        with pytest.raises(KeyError):
            ex.logs(tid)

    run(lambda: _with(ex, body))


# -- health checks ------------------------------------------------------------------------


def test_health_check_passes(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    health = {"cmd": 'test -n "$HOSTNAME"', "interval": 0.05, "timeout": 5, "retries": 2}
    rec = lab.record(tid, ["sleep", "60"], health=health)

    async def body() -> None:
        ex.sync([rec])
        running = await lab.reaches(tid, "running")
        lab.pid(tid)
        assert "healthy" not in running  # not up before the first success
        await lab.until(lambda: any(r.get("healthy") is True for r in lab.of(tid)), "healthy")
        assert ex.running() == [tid]

    run(lambda: _with(ex, body))


def test_unhealthy_task_is_stopped_and_failed_quoting_the_check(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    health = {"cmd": "echo no answer on 8080; exit 1", "interval": 0.05, "retries": 2}
    rec = lab.record(tid, ["sleep", "60"], health=health, stop_grace_period=5)

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(tid, "running")
        pid = lab.pid(tid)
        final = await lab.ended(tid)
        assert final["state"] == "failed" and final["message"] == "unhealthy"
        assert "unhealthy" in final["error"] and "no answer on 8080" in final["error"]
        assert "exit code 1" in final["error"]
        assert final["exit_code"] == 128 + signal.SIGTERM
        healthy = [r["healthy"] for r in lab.of(tid) if "healthy" in r]
        assert healthy and healthy[0] is False
        assert not _alive(pid)

    run(lambda: _with(ex, body))


def test_health_failures_in_start_period_do_not_count(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    flag = tmp_path / "ready"
    # the task becomes ready only after several failed checks; retries=1 would fail it at
    # once without the start period
    health = {
        "cmd": f"test -f {flag} || {{ echo starting; exit 1; }}",
        "interval": 0.05,
        "retries": 1,
        "start_period": 600,
    }
    cmd = ["sh", "-c", f"sleep 0.5; touch {flag}; exec sleep 60"]

    async def body() -> None:
        ex.sync([lab.record(tid, cmd, health=health)])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        await lab.until(lambda: any(r.get("healthy") is True for r in lab.of(tid)), "healthy")
        assert lab.states(tid)[-1] == "running"

    run(lambda: _with(ex, body))


def test_health_check_timeout_counts_as_failure(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    health = {"cmd": "echo slow; exec sleep 30", "interval": 0.05, "timeout": 0.2, "retries": 1}

    async def body() -> None:
        ex.sync([lab.record(tid, ["sleep", "60"], health=health)])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        final = await lab.ended(tid)
        assert final["state"] == "failed"
        assert "timed out after 0.2s" in final["error"] and "slow" in final["error"]

    run(lambda: _with(ex, body))


# -- network namespace --------------------------------------------------------------------


def test_task_with_networks_gets_its_own_namespace_with_lo_only(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    name = tasknetns.netns_name(tid)
    rec = lab.record(
        tid,
        ["sh", "-c", "ip -o link show; echo listed; exec sleep 60"],
        networks=["front"],
        user="nobody",
        health={"cmd": "ip -o link show | grep -c ': lo:'", "interval": 0.05},
    )

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(tid, "running")
        pid = lab.pid(tid)
        assert tasknetns.netns_path(name).exists()
        assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(tasknetns.netns_path(name)).st_ino
        await lab.until(lambda: ["stdout", "listed"] in ex.logs(tid)["lines"], "the link list")
        links = [t for s, t in ex.logs(tid)["lines"] if s == "stdout" and t != "listed"]
        assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0]
        await lab.until(lambda: any(r.get("healthy") for r in lab.of(tid)), "healthy")
        # a process that left the task's group still dies with the namespace
        escaped = subprocess.Popen(["ip", "netns", "exec", name, "setsid", "sleep", "60"])
        lab.keep(escaped.pid)
        await lab.until(lambda: escaped.pid in tasknetns.pids_inside(name), "escapee inside")
        ex.sync([{**rec, "desired_state": "shutdown"}])
        await lab.ended(tid)
        assert escaped.wait(timeout=10) == -signal.SIGKILL
        assert not tasknetns.netns_path(name).exists()
        assert not _alive(pid)

    run(lambda: _with(ex, body))


# -- logs ---------------------------------------------------------------------------------


def test_logs_tail_since_and_rotation(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    ex.log_max_bytes = 200
    ex.rotate_interval = 3600.0  # the test rotates by hand
    tid = lab.new_id()
    go = tmp_path / "go"
    script = (
        "i=0; while [ $i -lt 40 ]; do echo \"out $i\"; i=$((i+1)); done; echo 'err A' >&2; "
        f"while [ ! -f {go} ]; do sleep 0.02; done; echo 'out more'; echo 'err B' >&2; "
        "exec sleep 60"
    )

    async def body() -> None:
        ex.sync([lab.record(tid, ["sh", "-c", script])])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        await lab.until(lambda: ["stderr", "err A"] in ex.logs(tid)["lines"], "first output")
        first = ex.logs(tid)
        assert [t for s, t in first["lines"] if s == "stdout"] == [f"out {i}" for i in range(40)]
        rotated = await ex.rotate_logs()
        assert rotated == [(tid, "stdout")]
        task_dir = ex.tasks_dir / tid
        assert (task_dir / "stdout.log.1").stat().st_size > 200
        assert (task_dir / "stdout.log").stat().st_size == 0
        tail = ex.logs(tid, tail=2)
        assert tail["lines"] == [
            ["stdout", "out 38"], ["stdout", "out 39"], ["stderr", "err A"]
        ]  # fmt: skip
        go.touch()
        await lab.until(lambda: ex.logs(tid, since=first["since"])["lines"], "more output")
        await lab.until(lambda: len(ex.logs(tid, since=first["since"])["lines"]) == 2, "both")
        more = ex.logs(tid, since=first["since"])
        assert more["lines"] == [["stdout", "out more"], ["stderr", "err B"]]
        assert ex.logs(tid, since=more["since"])["lines"] == []
        # the process kept writing to its own file after the truncation
        assert (task_dir / "stdout.log").read_text() == "out more\n"
        with pytest.raises(KeyError):
            ex.logs("no-such-task")

    run(lambda: _with(ex, body))


# -- agent restart ------------------------------------------------------------------------


def test_second_executor_adopts_live_tasks_and_reaps_dead_ones(lab: Lab) -> None:
    live, dead, done = lab.new_id(), lab.new_id(), lab.new_id()
    recs = [
        lab.record(live, ["sleep", "60"], networks=["front"]),
        lab.record(dead, ["sleep", "60"], networks=["front"]),
        lab.record(done, ["sh", "-c", "echo bye"]),
    ]

    async def body() -> None:
        first = lab.executor()
        await first.start()
        try:
            first.sync(recs)
            await lab.reaches(live, "running")
            await lab.reaches(dead, "running")
            await lab.ended(done)
            live_pid, dead_pid = lab.pid(live), lab.pid(dead)
        finally:
            await first.close(stop_tasks=False)
        assert _alive(live_pid) and _alive(dead_pid)
        # the agent is down; one task dies meanwhile (and is reaped by its parent, as init
        # would do for a real agent's orphan)
        os.kill(dead_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(dead_pid, 0)
        lab.reports.clear()

        second = lab.executor()
        await second.start()
        try:
            assert second.running() == [live]
            adopted = lab.last(live)
            assert adopted["state"] == "running" and adopted["pid"] == live_pid
            reaped = lab.last(dead)
            assert reaped["state"] == "failed" and reaped["error"] == ERR_DOWN
            assert not tasknetns.netns_path(tasknetns.netns_name(dead)).exists()
            assert lab.last(done)["state"] == "complete"  # re-reported, not re-run
            assert second.logs(done)["lines"] == [["stdout", "bye"]]
            # the cluster still lists all three as running: nothing is started twice
            second.sync([{**r, "state": "running"} for r in recs])
            await asyncio.sleep(0.2)
            assert not [r for r in lab.reports if r["state"] in ("accepted", "starting")]
            assert second.running() == [live]
            second.sync([{**recs[0], "desired_state": "shutdown"}, recs[1], recs[2]])
            final = await lab.ended(live)
            assert final["state"] == "shutdown"
            # a real agent cannot know (not its child); this test process is the parent
            assert final["exit_code"] in (None, 128 + signal.SIGTERM)
            assert not _alive(live_pid)
            assert not tasknetns.netns_path(tasknetns.netns_name(live)).exists()
        finally:
            await second.close(stop_tasks=True)

    run(body)


def test_adopted_task_that_exits_is_reported_without_an_exit_code(lab: Lab) -> None:
    tid = lab.new_id()
    rec = lab.record(tid, ["sleep", "60"])

    async def body() -> None:
        first = lab.executor()
        await first.start()
        try:
            first.sync([rec])
            await lab.reaches(tid, "running")
            pid = lab.pid(tid)
            popen = first._tasks[tid].popen
        finally:
            await first.close(stop_tasks=False)
        lab.reports.clear()
        second = lab.executor()
        await second.start()
        try:
            assert second.running() == [tid]
            os.kill(pid, signal.SIGTERM)
            assert popen is not None
            popen.wait()  # another parent reaps it, as init would
            final = await lab.ended(tid)
            assert final["state"] == "failed"
            assert final["error"] == "exited while not supervised by this agent; exit code unknown"
            assert second.running() == []
        finally:
            await second.close(stop_tasks=True)

    run(body)


def test_logs_are_rotated_by_the_executor_on_its_own(lab: Lab) -> None:
    ex = lab.executor()
    ex.log_max_bytes = 100
    ex.rotate_interval = 0.05
    tid = lab.new_id()
    script = 'i=0; while [ $i -lt 30 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 60'

    async def body() -> None:
        ex.sync([lab.record(tid, ["sh", "-c", script])])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        rotated = ex.tasks_dir / tid / "stdout.log.1"
        await lab.until(rotated.exists, "a rotated stdout file")
        assert [t for _, t in ex.logs(tid)["lines"]] == [f"line {i}" for i in range(30)]

    run(lambda: _with(ex, body))


def test_stop_before_the_process_starts(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    rec = lab.record(tid, ["sleep", "60"], networks=["front"])

    async def body() -> None:
        ex.sync([rec])
        ex.sync([{**rec, "desired_state": "shutdown"}])
        final = await lab.ended(tid)
        assert final["state"] == "shutdown"
        assert "running" not in lab.states(tid)
        assert ex.running() == []
        assert not tasknetns.netns_path(tasknetns.netns_name(tid)).exists()

    run(lambda: _with(ex, body))


def test_close_with_stop_tasks_leaves_nothing_behind(lab: Lab) -> None:
    ex = lab.executor()
    ids = [lab.new_id(), lab.new_id()]
    recs = [lab.record(i, ["sleep", "60"], networks=["front"]) for i in ids]

    async def body() -> None:
        await ex.start()
        ex.sync(recs)
        for i in ids:
            await lab.reaches(i, "running")
        pids = [lab.pid(i) for i in ids]
        await ex.close(stop_tasks=True)
        assert [lab.last(i)["state"] for i in ids] == ["shutdown", "shutdown"]
        assert not any(_alive(p) for p in pids)
        assert not any(tasknetns.netns_path(tasknetns.netns_name(i)).exists() for i in ids)
        assert ex.running() == []

    run(body)


def test_restart_reaps_half_made_and_damaged_task_dirs(lab: Lab) -> None:
    ex = lab.executor()
    half, damaged = lab.new_id(), lab.new_id()
    for task_id in (half, damaged):
        (ex.tasks_dir / task_id).mkdir(parents=True)
        subprocess.run(["ip", "netns", "add", tasknetns.netns_name(task_id)], check=True)
    # the agent stopped after recording the namespace, before the process started
    state = {"id": half, "pid": None, "start_ticks": None, "started_at": None,
             "netns": tasknetns.netns_name(half), "final": None,
             "record": lab.record(half, ["sleep", "60"], networks=["front"])}  # fmt: skip
    (ex.tasks_dir / half / "state.json").write_text(json.dumps(state))
    (ex.tasks_dir / damaged / "state.json").write_text("{not json")

    async def body() -> None:
        assert lab.of(half) == [
            {"id": half, "state": "failed", "message": "failed", "error": ERR_NOT_STARTED}
        ]
        assert lab.of(damaged) == []
        assert not (ex.tasks_dir / damaged).exists()
        for task_id in (half, damaged):
            assert not tasknetns.netns_path(tasknetns.netns_name(task_id)).exists()
        assert ex.running() == []

    run(lambda: _with(ex, body))
