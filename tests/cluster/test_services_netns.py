"""`meshkit service` end to end: a manager and two workers as agent processes on namespace
hosts (198.18.0.0/24), services of real processes, driven through the CLI.

One cluster serves the whole module (starting three agents costs seconds); every test makes
its own services and removes them. The test that kills a worker's agent runs last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.labutil import Lab, lab_cluster
from support.polling import until

pytestmark = pytest.mark.root

HOSTS = ("m1", "w1", "w2")


class Cluster(Lab):
    def service(
        self, *args: str, host: str = "m1", timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        return self.cli("service", *args, host=host, timeout=timeout)

    def svc_ok(self, *args: str, host: str = "m1") -> str:
        return self.cli_ok("service", *args, host=host)

    def hostnames(self) -> dict[str, str]:
        return {n["ID"]: n["Hostname"] for n in json.loads(self.ok("m1", "ls", "--format", "json"))}

    def rm(self, name: str) -> None:
        self.rm_service(name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, HOSTS) as c:
        yield c


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_create_scale_and_rm(cluster: Cluster) -> None:
    out = cluster.svc_ok("create", "--name", "sleepy", "--replicas", "3", "--", "sleep", "1000")
    assert "verify: Service converged" in out
    tasks = cluster.running("sleepy")
    assert len(tasks) == 3
    # spread: one task on each node (fewest tasks of this service first)
    assert sorted(t["Node"] for t in tasks) == ["m1", "w1", "w2"]
    assert all(pid_alive(t["Pid"]) for t in tasks)

    ls = cluster.svc_ok("ls")
    header, row = ls.splitlines()[0], next(x for x in ls.splitlines() if "sleepy" in x)
    assert header.split() == ["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"]
    assert "replicated" in row and "3/3" in row and "sleep 1000" in row

    cluster.svc_ok("scale", "sleepy=5")
    until(lambda: len(cluster.running("sleepy")) == 5, 30, "5 running")
    names = sorted(t["Name"] for t in cluster.running("sleepy"))
    assert names == [f"sleepy.{i}" for i in range(1, 6)]

    cluster.svc_ok("scale", "sleepy=2")
    until(lambda: len(cluster.running("sleepy")) == 2, 30, "2 running")
    assert sorted(t["Name"] for t in cluster.running("sleepy")) == ["sleepy.1", "sleepy.2"]
    gone = [t for t in cluster.tasks("sleepy") if t["Slot"] > 2]
    until(lambda: all(not pid_alive(t["Pid"]) for t in gone if t["Pid"]), 20, "scaled-down exit")

    pids = [t["Pid"] for t in cluster.running("sleepy")]
    cluster.rm("sleepy")
    until(lambda: not any(pid_alive(p) for p in pids), 20, "tasks stopped after rm")


def test_killed_task_restarts_after_delay(cluster: Cluster) -> None:
    cluster.svc_ok(
        "create", "--name", "phoenix", "--replicas", "1", "--restart-delay", "1s",
        "--", "sleep", "1000",
    )  # fmt: skip
    (task,) = cluster.running("phoenix")
    os.kill(task["Pid"], signal.SIGKILL)

    def replaced() -> list[dict[str, Any]]:
        return [t for t in cluster.running("phoenix") if t["ID"] != task["ID"]]

    (new,) = until(replaced, 30, "a replacement task")
    old = next(t for t in cluster.tasks("phoenix") if t["ID"] == task["ID"])
    assert old["State"] == "failed"
    assert "SIGKILL" in old["Error"]
    assert new["Name"] == "phoenix.1"
    # ps shows the history under the slot, newest first
    ps = cluster.svc_ok("ps", "phoenix").splitlines()
    assert ps[1].split()[1] == "phoenix.1"
    assert ps[2].split()[1:3] == ["\\_", "phoenix.1"]
    cluster.rm("phoenix")


def test_errors_are_whole(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--detach", "--name", "typo", "--restart-condition", "none",
                   "--", "ngnix", "-g", "daemon off;")  # fmt: skip
    (t,) = until(lambda: [t for t in cluster.tasks("typo") if t["Error"]], 30, "an error")
    assert t["State"] == "rejected"
    assert "exec: 'ngnix': not found in PATH" in t["Error"]

    long_msg = "x" * 300
    code = f"import sys; sys.stderr.write('boom: ' + {long_msg!r} + '\\n'); sys.exit(2)"
    cluster.svc_ok("create", "--detach", "--name", "crash", "--restart-condition", "none",
                   "--", sys.executable, "-c", code)  # fmt: skip
    (t,) = until(lambda: [t for t in cluster.tasks("crash") if t["Error"]], 30, "an error")
    assert t["State"] == "failed"
    assert t["Error"].startswith("exited with code 2")
    assert "boom: " + long_msg in t["Error"]  # whole, never cut
    table = cluster.svc_ok("ps", "crash", "--no-trunc")
    assert long_msg in table
    inspect = json.loads(cluster.svc_ok("inspect", "crash"))
    assert long_msg in inspect[0]["tasks"][0]["Error"]
    cluster.rm("typo")
    cluster.rm("crash")


def test_constraints_and_global(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--name", "pinned", "--replicas", "2",
                   "--constraint", "node.hostname==w2", "--", "sleep", "1000")  # fmt: skip
    assert {t["Node"] for t in cluster.running("pinned")} == {"w2"}
    cluster.rm("pinned")

    cluster.svc_ok("create", "--name", "notmgr", "--replicas", "2",
                   "--constraint", "node.role!=manager", "--", "sleep", "1000")  # fmt: skip
    assert {t["Node"] for t in cluster.running("notmgr")} == {"w1", "w2"}
    cluster.rm("notmgr")

    r = cluster.service("create", "--detach", "--name", "bad", "--constraint", "node.colour=red",
                        "--", "sleep", "1")  # fmt: skip
    assert r.returncode == 2
    assert "--constraint" in r.stderr and "node.colour=red" in r.stderr

    cluster.svc_ok("create", "--name", "everywhere", "--mode", "global", "--", "sleep", "1000")
    tasks = cluster.running("everywhere")
    assert sorted(t["Node"] for t in tasks) == ["m1", "w1", "w2"]
    assert all(t["Name"].startswith("everywhere.") and t["Slot"] == 0 for t in tasks)
    ls = cluster.svc_ok("ls")
    assert "global" in next(x for x in ls.splitlines() if "everywhere" in x)
    cluster.rm("everywhere")


def test_drain_moves_tasks_and_active_takes_new_ones(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--name", "mover", "--replicas", "3", "--", "sleep", "1000")
    cluster.ok("m1", "update", "--availability", "drain", "w1")
    try:
        until(
            lambda: len(r := cluster.running("mover")) == 3 and "w1" not in {t["Node"] for t in r},
            30,
            "tasks off w1",
        )
        shut = [t for t in cluster.tasks("mover") if t["Node"] == "w1"]
        assert shut and all(t["DesiredState"] == "shutdown" for t in shut)
    finally:
        cluster.ok("m1", "update", "--availability", "active", "w1")
    cluster.rm("mover")


def test_health_check_fails_task(cluster: Cluster) -> None:
    cluster.svc_ok(
        "create", "--detach", "--name", "sick", "--health-cmd", "exit 1",
        "--health-interval", "200ms", "--health-retries", "2", "--health-timeout", "1s",
        "--restart-delay", "500ms", "--", "sleep", "1000",
    )  # fmt: skip

    def unhealthy() -> list[dict[str, Any]]:
        return [t for t in cluster.tasks("sick") if t["State"] == "failed"]

    failed = until(unhealthy, 30, "a task failed by its health check")
    assert "health" in failed[0]["Error"]
    assert failed[0]["Healthy"] is False
    cluster.rm("sick")

    cluster.svc_ok("create", "--name", "well", "--health-cmd", "true",
                   "--health-interval", "200ms", "--", "sleep", "1000")  # fmt: skip
    until(lambda: [t for t in cluster.running("well") if t["Healthy"] is True], 20, "healthy")
    cluster.rm("well")


def test_rolling_update_rollback_and_start_first(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--name", "roll", "--replicas", "2", "--update-monitor", "1s",
                   "--", "sleep", "1000")  # fmt: skip
    v1 = {t["ID"] for t in cluster.running("roll")}

    # a failing update pauses (the default failure action)
    r = cluster.service("update", "roll", "--args", "false", "--update-monitor", "2s")
    assert r.returncode == 1 and "paused" in r.stderr
    svc = json.loads(cluster.svc_ok("inspect", "roll"))[0]
    assert svc["update_status"]["state"] == "paused"

    # rollback restores the previous spec
    cluster.svc_ok("rollback", "roll")
    svc = json.loads(cluster.svc_ok("inspect", "roll"))[0]
    assert svc["spec"]["command"] == ["sleep", "1000"]
    until(lambda: len(cluster.running("roll")) == 2, 30, "2 running after rollback")

    # failure action rollback: the update undoes itself
    cluster.service("update", "roll", "--args", "false", "--update-failure-action", "rollback",
                    "--update-monitor", "2s", "--detach")  # fmt: skip

    def rolled_back() -> bool:
        s = json.loads(cluster.svc_ok("inspect", "roll"))[0]
        return (s.get("update_status") or {}).get("state") == "rollback_completed"

    until(rolled_back, 60, "automatic rollback")
    until(lambda: len(cluster.running("roll")) == 2, 30, "2 running after auto rollback")

    # start-first: the new task runs before the old one stops
    before = {t["Slot"]: t["ID"] for t in cluster.running("roll")}
    cluster.svc_ok("update", "roll", "--args", "sleep 1001", "--update-order", "start-first")
    tasks = {t["ID"]: t for t in cluster.tasks("roll")}
    new = [t for t in tasks.values() if t["State"] == "running" and t["DesiredState"] == "running"]
    assert len(new) == 2 and not ({t["ID"] for t in new} & (v1 | set(before.values())))
    for t in new:
        old = tasks[before[t["Slot"]]]
        assert old["State"] == "shutdown"
        assert old["UpdatedAt"] >= t["StartedAt"]  # stopped only once its successor ran
    cluster.rm("roll")


def test_logs_from_two_nodes(cluster: Cluster) -> None:
    code = "import time; print('hello from a task', flush=True); time.sleep(1000)"
    cluster.svc_ok(
        "create", "--name", "talker", "--replicas", "2", "--constraint", "node.role==worker",
        "--", sys.executable, "-c", code,
    )  # fmt: skip

    def both() -> str:
        out = cluster.svc_ok("logs", "talker")
        return out if out.count("hello from") >= 2 else ""

    out = until(both, 20, "logs of both tasks")
    assert "@w1" in out and "@w2" in out
    assert "talker.1" in out and "talker.2" in out
    cluster.rm("talker")


def test_agent_restart_adopts_its_tasks(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--name", "steady", "--replicas", "2",
                   "--constraint", "node.hostname==w1", "--", "sleep", "1000")  # fmt: skip
    before = {t["ID"]: t["Pid"] for t in cluster.running("steady")}
    assert len(before) == 2
    # A restart slower than 3 missed beats would (rightly) mark w1 Down and orphan its tasks:
    # on a loaded CI host a stop and start can take that long, so beats are 5 s meanwhile.
    cluster.cli_ok("cluster", "update", "--dispatcher-heartbeat", "5s")
    try:
        cluster.lab.stop(cluster.procs["w1"])  # SIGTERM: the agent stops, its tasks go on
        assert all(pid_alive(p) for p in before.values())
        cluster.start("w1", "run")
        until(lambda: cluster.ls("m1").get("w1", {}).get("Status") == "Ready", 30, "w1 Ready")
        time.sleep(3)  # a few rounds of assignments and reports
        after = {t["ID"]: t["Pid"] for t in cluster.running("steady")}
        assert after == before  # adopted: same tasks, same processes, no duplicates
        assert len(cluster.tasks("steady")) == 2
    finally:
        cluster.cli_ok("cluster", "update", "--dispatcher-heartbeat", "1s")
    cluster.rm("steady")
    until(lambda: not any(pid_alive(p) for p in before.values()), 20, "adopted tasks stopped")


def test_killed_worker_agent_tasks_move(cluster: Cluster) -> None:
    cluster.svc_ok("create", "--name", "survivor", "--replicas", "3", "--", "sleep", "1000")
    on_w2 = [t for t in cluster.running("survivor") if t["Node"] == "w2"]
    assert on_w2
    cluster.kill("w2")
    start = time.monotonic()

    def moved() -> bool:
        r = cluster.running("survivor")
        return len(r) == 3 and all(t["Node"] != "w2" for t in r)

    until(moved, 30, "tasks moved off the dead worker")
    # heartbeat 1 s, 3 missed beats: Down after about 3 s; rescheduled soon after
    assert time.monotonic() - start < 20
    old = [t for t in cluster.tasks("survivor") if t["ID"] in {x["ID"] for x in on_w2}]
    assert all(t["State"] == "orphaned" for t in old)
