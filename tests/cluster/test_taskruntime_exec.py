"""A task's runtime with real processes, cgroups and mounts, through the executor (root).

Limits use this host's real cgroups (v1 here, v2 where the host has it) under a parent of
the test's own (MESHKIT_CGROUP_PARENT), checked removed at the end of every test: a memory hog
under a 64 MiB limit is killed and reported "OOM killed (memory limit 64MiB)"; a busy loop
under 0.2 CPUs uses about a fifth of a core as the cgroup's own usage counter measures it;
binds (readonly really read-only), tmpfs, volumes (kept across tasks), a missing bind source
as a clear rejection, the hostname, stop signal, resolv.conf and --init's reaping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from meshkit.cluster.api.common import new_node_id
from meshkit.cluster.tasks import cgroups
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks.executor import Executor

pytestmark = pytest.mark.root
DEADLINE = 20.0
HOG = "a = []\nwhile True:\n    a.append(bytearray(4 << 20))\n"


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.reports: list[dict[str, Any]] = []
        self.pids: list[tuple[int, int | None]] = []

    def executor(self) -> Executor:
        return Executor(self.root / "data", "node1", "host-a", self.reports.extend)

    def record(self, command: list[str], **spec: Any) -> dict[str, Any]:
        return {
            "id": new_node_id(), "service_id": "svc", "service_name": "web", "slot": 3,
            "node_id": "node1", "desired_state": "running", "state": "assigned",
            "spec": {"command": command, **spec},
        }  # fmt: skip

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["id"] == task_id]

    async def until(self, check: Callable[[], object], what: str) -> None:
        end = asyncio.get_running_loop().time() + DEADLINE
        while not check():
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"timed out waiting for {what}; reports: {self.reports}")
            await asyncio.sleep(0.02)

    async def reaches(self, task_id: str, state: str) -> dict[str, Any]:
        await self.until(lambda: any(r["state"] == state for r in self.of(task_id)), state)
        report = next(r for r in self.of(task_id) if r["state"] == state)
        if report.get("pid"):
            self.pids.append((report["pid"], taskproc.start_time(report["pid"])))
        return report

    async def ended(self, task_id: str) -> dict[str, Any]:
        terminal = {"complete", "failed", "shutdown", "rejected"}
        await self.until(lambda: self.of(task_id)[-1]["state"] in terminal, "the end")
        return self.of(task_id)[-1]


def parent_dirs(parent: str) -> list[Path]:
    setup = cgroups.host_setup()
    if setup.version == "v2":
        return [Path(setup.v2_root, parent)]
    return [Path(p, parent) for p in set(setup.v1.values())]


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("tasks' cgroups and mount namespaces need root")
    parent = f"meshkit-test-{os.getpid()}"
    monkeypatch.setenv(cgroups.PARENT_ENV, parent)
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        for pid, ticks in made.pids:
            if ticks is not None and taskproc.start_time(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        leftovers = []
        for d in parent_dirs(parent):
            if d.exists():
                leftovers += [str(c) for c in d.iterdir() if c.is_dir()]
                for child in d.iterdir():
                    if child.is_dir():
                        cgroups.TaskCgroup("v1", [str(child)]).remove()
                with contextlib.suppress(OSError):
                    d.rmdir()
        assert not leftovers, f"task cgroups left behind: {leftovers}"


def run(ex: Executor, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await ex.start()
        try:
            await body()
        finally:
            await ex.close(stop_tasks=True)

    uvloop.run(main())


def limits(**kw: int) -> dict[str, Any]:
    base = {"nano_cpus": 0, "memory_bytes": 0, "pids": 0}
    return {"limits": {**base, **kw}, "reservations": {"nano_cpus": 0, "memory_bytes": 0}}


needs_cgroups = pytest.mark.skipif(
    cgroups.host_setup().version == "none", reason="no cgroup controllers for cpu/memory/pids"
)


@needs_cgroups
def test_memory_hog_is_oom_killed_and_reported_so(lab: Lab) -> None:
    ex = lab.executor()
    rec = lab.record([sys.executable, "-c", HOG], resources=limits(memory_bytes=64 << 20))

    async def body() -> None:
        ex.sync([rec])
        final = await lab.ended(rec["id"])
        assert final["state"] == "failed", final
        assert final["error"] == "OOM killed (memory limit 64MiB)"
        assert final["exit_code"] == 128 + signal.SIGKILL

    run(ex, body)


@needs_cgroups
def test_cpu_limit_holds_a_busy_loop_near_its_share(lab: Lab) -> None:
    ex = lab.executor()
    rec = lab.record(["sh", "-c", "while :; do :; done"], resources=limits(nano_cpus=200_000_000))

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(rec["id"], "running")
        t = ex._tasks[rec["id"]]
        assert t.cgroup is not None
        pid = lab.pids[-1][0]
        assert pid in t.cgroup.pids()  # it joined before exec: no unlimited start
        loop = asyncio.get_running_loop()
        u0, w0 = t.cgroup.cpu_usage_ns(), loop.time()
        await asyncio.sleep(1.5)
        u1, w1 = t.cgroup.cpu_usage_ns(), loop.time()
        assert u0 is not None and u1 is not None
        share = (u1 - u0) / 1e9 / (w1 - w0)
        assert 0.08 < share < 0.35, f"used {share:.2f} of a core under a 0.2 CPU limit"
        ex.sync([{**rec, "desired_state": "shutdown"}])
        final = await lab.ended(rec["id"])
        assert final["state"] == "shutdown"
        assert t.cgroup is None  # removed (the fixture checks the directories too)

    run(ex, body)


@needs_cgroups
def test_pids_limit_stops_a_fork_bomb_short(lab: Lab) -> None:
    ex = lab.executor()
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo started; wait"
    rec = lab.record(["sh", "-c", script], resources=limits(pids=4))

    async def body() -> None:
        ex.sync([rec])
        final = await lab.ended(rec["id"])
        out = " ".join(text for _, text in ex.logs(rec["id"])["lines"])
        assert final["state"] == "failed" and "fork" in out.lower(), (final, out)
        assert "started" not in out

    run(ex, body)


def test_mounts_bind_readonly_tmpfs_and_volume(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello from the host\n")
    mnt = tmp_path / "mnt"
    script = (
        f"cat {mnt}/ro/hello.txt; touch {mnt}/ro/x 2>/dev/null && echo ro-WRITABLE || echo ro-ok;"
        f"echo w > {mnt}/rw/w.txt && echo rw-ok; "
        f"stat -c 'tmpfs %a' {mnt}/t; df -P {mnt}/t | tail -1 | awk '{{print \"size\", $2}}';"
        f"cat {mnt}/vol/count 2>/dev/null; echo again >> {mnt}/vol/count"
    )
    mounts = [
        {"type": "bind", "source": str(src), "target": f"{mnt}/ro", "readonly": True},
        {"type": "bind", "source": str(src), "target": f"{mnt}/rw"},
        {"type": "tmpfs", "target": f"{mnt}/t", "tmpfs_size": 8 << 20, "tmpfs_mode": 0o1770},
        {"type": "volume", "source": "counts", "target": f"{mnt}/vol"},
    ]
    first = lab.record(["sh", "-c", script], mounts=mounts)
    second = lab.record(["sh", "-c", script], mounts=mounts)

    async def body() -> None:
        ex.sync([first])
        assert (await lab.ended(first["id"]))["state"] == "complete"
        out = "\n".join(text for _, text in ex.logs(first["id"])["lines"])
        assert "hello from the host" in out and "ro-ok" in out and "rw-ok" in out
        assert "tmpfs 1770" in out and "size 8192" in out
        assert (src / "w.txt").read_text() == "w\n"  # the writable bind is the host's folder
        assert not any(mnt.joinpath("t").iterdir())  # the tmpfs was the task's only
        vol = lab.root / "data" / "volumes" / "counts" / "_data"
        assert vol.joinpath("count").read_text() == "again\n"
        ex.sync([second])  # a new task of the slot finds the volume as the first left it
        assert (await lab.ended(second["id"]))["state"] == "complete"
        out2 = [text for _, text in ex.logs(second["id"])["lines"]]
        assert "again" in out2
        assert vol.joinpath("count").read_text() == "again\nagain\n"

    run(ex, body)


def test_missing_bind_source_is_a_clear_rejection(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    missing = tmp_path / "srv-data"
    rec = lab.record(["true"], mounts=[{"type": "bind", "source": str(missing), "target": "/data"}])

    async def body() -> None:
        ex.sync([rec])
        final = await lab.ended(rec["id"])
        assert final["state"] == "rejected"
        assert final["error"] == f"mount /data: source {missing} does not exist on node host-a"
        assert not os.path.exists("/data") or os.path.isdir("/data")

    run(ex, body)


def test_unwritable_volume_folder_is_a_clear_rejection(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    volumes = lab.root / "data" / "volumes"
    volumes.mkdir(parents=True)
    volumes.joinpath("v").write_text("a file where the volume's folder would go")
    rec = lab.record(["true"], mounts=[{"type": "volume", "source": "v", "target": "/mnt/v"}])

    async def body() -> None:
        ex.sync([rec])
        final = await lab.ended(rec["id"])
        assert final["state"] == "rejected"
        assert final["error"].startswith("mount /mnt/v: cannot make volume v at ")

    run(ex, body)


def test_hostname_stop_signal_dns_and_init(lab: Lab) -> None:
    ex = lab.executor()
    script = (
        "hostname; echo HOSTNAME=$HOSTNAME; cat /etc/resolv.conf; "
        "(sleep 30 &); "  # an orphan: re-parented to the task's init, not the node's
        "trap 'echo got-INT' INT; echo ready; while :; do sleep 0.05; done"
    )
    rec = lab.record(
        ["sh", "-c", script],
        hostname="{{.Service.Name}}-{{.Task.Slot}}",
        stop_signal="SIGINT",
        stop_grace_period=1.0,
        dns={"nameservers": ["192.0.2.53"], "search": ["corp.test"], "options": ["ndots:2"]},
        init=True,
    )
    host_name = os.uname().nodename

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(rec["id"], "running")

        def lines() -> list[str]:
            return [text for _, text in ex.logs(rec["id"])["lines"]]

        await lab.until(lambda: "ready" in lines(), "ready")
        out = lines()
        assert out[0] == "web-3" and "HOSTNAME=web-3" in out
        assert "nameserver 192.0.2.53" in out and "search corp.test" in out
        assert any(line.startswith("options") and "ndots:2" in line for line in out)
        assert os.uname().nodename == host_name  # the node's own name is untouched
        pid = lab.pids[-1][0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[3].endswith(b"taskinit.py") and argv[4].endswith(b"/sh")
        orphans = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid
            and Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x0030\x00"
        ]  # fmt: skip
        assert len(orphans) == 1
        os.kill(orphans[0], signal.SIGKILL)
        await lab.until(lambda: _state(orphans[0]) == "", "the init reaps the orphan")
        ex.sync([{**rec, "desired_state": "shutdown"}])
        final = await lab.ended(rec["id"])
        assert final["state"] == "shutdown"
        # the stop signal, not SIGTERM, and once: the init passes nothing on
        assert lines().count("got-INT") == 1
        assert final["exit_code"] == 128 + signal.SIGKILL  # it ignored it: killed after grace

    run(ex, body)


def _stat(pid: int) -> list[str]:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return data[data.rfind(")") + 2 :].split()


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _state(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else ""


def test_groups_are_added(lab: Lab) -> None:
    if shutil.which("id") is None:
        pytest.skip("no id(1)")
    ex = lab.executor()
    rec = lab.record(["id", "-G"], user="nobody", groups=["4242"])

    async def body() -> None:
        ex.sync([rec])
        assert (await lab.ended(rec["id"]))["state"] == "complete"
        out = [text for _, text in ex.logs(rec["id"])["lines"]]
        assert "4242" in out[0].split()

    run(ex, body)


@needs_cgroups
def test_cgroup_of_a_task_that_died_while_the_agent_was_down_is_removed(lab: Lab) -> None:
    first = lab.executor()
    rec = lab.record(["sleep", "60"], resources=limits(memory_bytes=32 << 20))
    dirs: list[str] = []

    async def start_then_leave() -> None:
        await first.start()
        first.sync([rec])
        await lab.reaches(rec["id"], "running")
        cg = first._tasks[rec["id"]].cgroup
        assert cg is not None
        dirs.extend(cg.dirs)
        await first.close(stop_tasks=False)  # the agent goes; the task keeps running

    uvloop.run(start_then_leave())
    pid = lab.pids[-1][0]
    os.kill(pid, signal.SIGKILL)  # dies while no agent watches
    lab.reports.clear()
    second = lab.executor()

    async def body() -> None:
        final = await lab.ended(rec["id"])
        assert final["state"] == "failed"
        assert not any(os.path.exists(d) for d in dirs)

    run(second, body)


@needs_cgroups
def test_health_check_runs_in_the_tasks_mounts_hostname_and_cgroup(
    lab: Lab, tmp_path: Path
) -> None:
    ex = lab.executor()
    t = tmp_path / "t"
    check = (
        f'test "$(cat {t}/ok)" = yes && test "$(hostname)" = probe-me && '
        "grep -q meshkit-test /proc/self/cgroup"
    )
    health = {"cmd": check, "interval": 0.05, "timeout": 5, "retries": 1}
    rec = lab.record(
        ["sh", "-c", f"echo yes > {t}/ok; exec sleep 60"], health=health, hostname="probe-me",
        mounts=[{"type": "tmpfs", "target": str(t)}], resources=limits(pids=50),
    )  # fmt: skip

    async def body() -> None:
        ex.sync([rec])
        await lab.reaches(rec["id"], "running")
        await lab.until(lambda: any(r.get("healthy") is True for r in lab.of(rec["id"])), "ok")
        assert not list(t.iterdir())  # the file is on the task's tmpfs only

    run(ex, body)


@needs_cgroups
def test_agent_stopping_while_a_limited_task_spawns_loses_no_process(lab: Lab) -> None:
    first = lab.executor()
    recs = [lab.record(["sleep", "60"], resources=limits(pids=20)) for _ in range(4)]
    dirs: list[str] = []

    async def start_and_leave_at_once() -> None:
        await first.start()
        first.sync(recs)

        def spawning() -> bool:  # its cgroup made, its process not known yet
            return any(t.cgroup and t.pid is None for t in first._tasks.values())

        while not spawning():
            await asyncio.sleep(0)
        dirs.extend(d for t in first._tasks.values() if t.cgroup for d in t.cgroup.dirs)
        await first.close(stop_tasks=False)  # cancels the launches in the middle

    uvloop.run(start_and_leave_at_once())
    lab.reports.clear()
    second = lab.executor()

    async def body() -> None:
        await second.start()
        for rec in recs:  # each one started, recorded, and adopted by the next agent
            await lab.until(lambda r=rec: lab.of(r["id"]), "a report")
            assert lab.of(rec["id"])[0]["state"] == "running", lab.of(rec["id"])
            lab.pids.append((lab.of(rec["id"])[0]["pid"], None))
        await second.close(stop_tasks=True)
        assert not any(os.path.isdir(d) for d in dirs)  # every cgroup, and what it held, gone

    uvloop.run(body())
