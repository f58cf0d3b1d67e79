"""`service logs --since/--until/--timestamps` end to end with real agents on 127.0.0.0/8:
a global service (a task on the manager and one on the worker, so the worker's logs come
over the task_logs RPC) prints a line, waits for a file, prints another; --since at a time
between the two keeps only the later lines (filtered on the nodes), --until only the
earlier, --timestamps prefixes RFC 3339 times that rise. Then a global service reserving
more memory than any node has: `service ps` shows one pending task per node saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents run tasks as root")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        c.join("w1", 2, token(m1, "worker"), m1)
        until(lambda: len([n for n in m1.ls() if n["Status"] == "Ready"]) == 2, 30, "2 nodes")
        yield c
    finally:
        m1 = c.agents.get("m1")
        if m1 is not None:
            names = [s["Name"] for s in json.loads(mk(m1, "service", "ls", "--format", "json"))]
            pids = [t["Pid"] for n in names for t in ps(m1, n) if t.get("Pid")]
            if names:
                run(m1, "service", "rm", *names)
                until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 30, "ended")
        c.close()


def run(a: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **ENV, "MESHKIT_HOST": a.sock},
    )  # fmt: skip


def mk(a: Agent, *args: str) -> str:
    r = run(a, *args)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def ps(a: Agent, service: str) -> list[dict[str, Any]]:
    return list(json.loads(mk(a, "service", "ps", service, "--format", "json")))


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat()


def test_since_until_and_timestamps_over_two_nodes(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    gate = Path(tempfile.mkdtemp(prefix="mk-gate-"))
    try:
        script = (
            f"echo early; while [ ! -f {gate}/go ]; do sleep 0.02; done; echo late; exec sleep 600"
        )
        mk(m1, "service", "create", "--detach", "--name", "clock", "--mode", "global",
           "--", "sh", "-c", script)  # fmt: skip

        def count(word: str, *flags: str) -> int:
            return mk(m1, "service", "logs", *flags, "clock").count(f"| {word}")

        until(lambda: count("early") == 2, 30, "both tasks' first line")
        time.sleep(0.1)  # past the file-time tick of the early writes
        mid = time.time()
        time.sleep(0.1)
        (gate / "go").touch()
        until(lambda: count("late") == 2, 30, "both tasks' second line")
        later = mk(m1, "service", "logs", "--since", rfc3339(mid), "clock")
        assert later.count("| late") == 2 and "| early" not in later
        assert "@m1" in later and "@w1" in later  # the worker's lines came over the RPC
        earlier = mk(m1, "service", "logs", "--until", f"{mid:.6f}", "clock")
        assert earlier.count("| early") == 2 and "| late" not in earlier
        assert count("early", "--since", "1h") == 2  # a relative time
        stamped = mk(m1, "service", "logs", "--timestamps", "clock").splitlines()
        assert len(stamped) == 4
        times = [datetime.fromisoformat(line.split()[0][:26] + "+00:00") for line in stamped]
        assert times == sorted(times)  # in time order across tasks and nodes
        words = [line.rsplit("| ", 1)[1] for line in stamped]
        assert words == ["early", "early", "late", "late"]
        assert all(t.timestamp() < mid for t in times[:2])
        assert all(t.timestamp() > mid for t in times[2:])
        bad = run(m1, "service", "logs", "--since", "yesterday", "clock")
        assert bad.returncode != 0 and "--since" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        run(m1, "service", "rm", "clock")
        for f in gate.iterdir():
            f.unlink()
        gate.rmdir()


def test_a_global_service_without_room_shows_a_pending_task_per_node(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]

    def reported() -> bool:
        nodes = json.loads(mk(m1, "node", "inspect", "m1", "w1"))
        return all(n["Resources"].get("MemoryBytes") for n in nodes)

    until(reported, 20, "both nodes report their resources")
    mk(m1, "service", "create", "--detach", "--name", "huge", "--mode", "global",
       "--reserve-memory", "100T", "--", "sleep", "60")  # fmt: skip
    until(lambda: len(ps(m1, "huge")) == 2, 20, "a task per node")
    tasks = ps(m1, "huge")
    assert sorted(t["Node"] for t in tasks) == ["m1", "w1"]
    for t in tasks:
        assert t["State"] == "pending" and not t["NodeID"]
        assert t["Error"] == "no suitable node (insufficient memory on 1 node)"
    table = mk(m1, "service", "ps", "--no-trunc", "huge")
    assert table.count("insufficient memory on 1 node") == 2
    run(m1, "service", "rm", "huge")
