"""Disaster recovery with real agents on 127.0.0.0/8: three managers, two destroyed (SIGKILL and
their data dirs removed), `node init --force-new-cluster` on the third: it is the only manager,
with the cluster's state (nodes, services, tokens); the worker's task kept running through it
all and the worker is Ready again; then two new managers join and the three replicate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tasks need root")


def mk(a: Agent, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **ENV, "MESHKIT_HOST": a.sock},
    )  # fmt: skip
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def by_name(a: Agent) -> dict[str, dict[str, Any]]:
    return {n["Hostname"]: n for n in a.ls()}


def running(a: Agent, service: str) -> list[dict[str, Any]]:
    tasks = json.loads(mk(a, "service", "ps", service, "--format", "json"))
    return [t for t in tasks if t["State"] == "running" and t["DesiredState"] == "running"]


def test_force_new_cluster_after_quorum_lost_for_good() -> None:
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        mt, wt = token(m1, "manager"), token(m1, "worker")
        m2 = c.join("m2", 2, mt, m1)
        m3 = c.join("m3", 3, mt, m1)
        w1 = c.join("w1", 4, wt, m1)
        until(lambda: len(m3.info()["raft"]["members"]) == 3, 30, "three raft members")
        mk(m1, "service", "create", "--detach", "--name", "keep", "--constraint",
           "node.role==worker", "--", "sleep", "3600")  # fmt: skip
        task = until(lambda: running(m3, "keep"), 30, "task running")[0]
        pid = w1.info()["node_id"] and task["ID"]
        # two managers destroyed for good
        for m in (m1, m2):
            m.stop(signal.SIGKILL)
            shutil.rmtree(m.data)
        until(lambda: not m3.info()["raft"]["has_quorum"], 20, "quorum lost")
        m3.stop()
        old_secret = (m3.data / "raft" / "secret").read_text()
        # the recovery
        m3.start("init", "--force-new-cluster", "--data-dir", str(m3.data), "--host", m3.sock)
        m3.wait_up()
        nodes = until(lambda: (n := by_name(m3)) and n["w1"]["Status"] == "Ready" and n, 30, "w1")
        assert nodes["m3"]["ManagerStatus"] == "Leader"
        for gone in ("m1", "m2"):
            assert nodes[gone]["Role"] == "worker" and nodes[gone]["ManagerStatus"] == ""
            until(lambda g=gone: by_name(m3)[g]["Status"] == "Down", 15, f"{gone} down")
        assert m3.info()["raft"]["members"] == [f"{m3.ip}:2378"]
        assert (m3.data / "raft" / "secret").read_text() != old_secret  # the old raft is shut out
        assert list((m3.data / "raft" / "before-force-new-cluster").glob("*/journal"))
        assert [t["ID"] for t in running(m3, "keep")] == [pid]  # the task was never restarted
        # a new manager joins with the token from before the disaster
        assert token(m3, "manager") == mt
        m4 = c.join("m4", 5, mt, m3)
        until(lambda: len(m3.info()["raft"]["members"]) == 2, 30, "two raft members")
        mk(m4, "node", "update", "--label-add", "after=recovery", "w1")
        until(lambda: by_name(m3)["w1"]["Labels"].get("after") == "recovery", 10, "replicated")
        m5 = c.join("m5", 6, mt, m4)  # a second one, through the first newcomer
        until(lambda: len(m5.info()["raft"]["members"]) == 3, 30, "three raft members again")
        # --force: a leader elected since (the new managers joined) gives every node, the
        # destroyed ones too, a grace period of Ready before it marks them Down again
        m3.ok("rm", "--force", "m1")
        until(lambda: "m1" not in by_name(m5), 10, "m1 removed everywhere")
        assert [t["ID"] for t in running(m4, "keep")] == [pid]
    finally:
        c.close()
