"""Limits, reservations and mounts end to end, with real agents on 127.0.0.0/8 and the CLI:
`service ps` says "OOM killed (memory limit 64MiB)" for a memory hog; a reservation larger
than any node leaves the task pending with swarm's reason; `node inspect` shows what each
node offers; a readonly bind is read-only in the task; a volume outlives the task that
wrote it (a restart finds it) and `volume rm` is refused while it is in use; a missing bind
source is the task's error naming the node. Every cgroup the agents made is gone at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.cluster.tasks import cgroups
from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and mounts need root")
PARENT = f"meshkit-e2e-{os.getpid()}"
HOG = "a = []\nwhile True:\n    a.append(bytearray(4 << 20))\n"


def parent_dirs() -> list[Path]:
    setup = cgroups.host_setup()
    if setup.version == "v2":
        return [Path(setup.v2_root, PARENT)]
    return [Path(p, PARENT) for p in set(setup.v1.values())]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    old = os.environ.get(cgroups.PARENT_ENV)
    os.environ[cgroups.PARENT_ENV] = PARENT  # the agents' cgroups go under a parent of ours
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        c.join("w1", 2, token(m1, "worker"), m1)
        until(lambda: len([n for n in m1.ls() if n["Status"] == "Ready"]) == 2, 30, "2 nodes")
        yield c
    finally:
        m1 = c.agents.get("m1")
        if m1 is not None:  # a failed test's services: their tasks end before the agents do
            names = [s["Name"] for s in json.loads(mk(m1, "service", "ls", "--format", "json"))]
            pids = [t["Pid"] for n in names for t in ps(m1, n) if t.get("Pid")]
            if names:
                run(m1, "service", "rm", *names)
                until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 30, "ended")
        c.close()
        if old is None:
            os.environ.pop(cgroups.PARENT_ENV, None)
        else:
            os.environ[cgroups.PARENT_ENV] = old
        left = []
        for d in parent_dirs():
            if d.exists():
                left += [str(x) for x in d.iterdir() if x.is_dir()]
                for x in d.iterdir():
                    if x.is_dir():
                        cgroups.TaskCgroup("v1", [str(x)]).remove()
                d.rmdir()
        assert not left, f"task cgroups left behind: {left}"


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


def on_w1(*args: str) -> list[str]:
    return ["--detach", "--constraint", "node.hostname==w1", *args]


def test_oom_and_reservations_in_service_ps_and_node_inspect(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]

    def offered() -> dict[str, Any]:
        return dict(json.loads(mk(m1, "node", "inspect", "w1"))[0]["Resources"])

    until(lambda: offered().get("MemoryBytes", 0) > 0, 20, "w1 reports its resources")
    assert offered()["NanoCPUs"] >= 10**9
    mk(m1, "service", "create", *on_w1("--name", "hog", "--limit-memory", "64M",
       "--restart-condition", "none", "--", sys.executable, "-c", HOG))  # fmt: skip
    until(lambda: any(t["State"] == "failed" for t in ps(m1, "hog")), 30, "the hog ends")
    (task,) = ps(m1, "hog")
    assert task["Error"] == "OOM killed (memory limit 64MiB)"
    assert "OOM killed (memory limit 64MiB)" in mk(m1, "service", "ps", "--no-trunc", "hog")
    mk(m1, "service", "create", "--detach", "--name", "big", "--reserve-memory", "100T",
       "--", "sleep", "60")  # fmt: skip
    until(lambda: ps(m1, "big") and ps(m1, "big")[0]["Error"], 20, "a reason")
    (big,) = ps(m1, "big")
    assert big["State"] == "pending"
    assert big["Error"] == "no suitable node (insufficient memory on 2 nodes)"
    mk(m1, "service", "rm", "hog", "big")


def test_mounts_volumes_and_a_missing_bind_source(cluster: Cluster) -> None:
    m1, w1 = cluster.agents["m1"], cluster.agents["w1"]
    src = cluster.root / "shared"
    src.mkdir()
    (src / "f").write_text("from the host\n")
    dst = cluster.root / "mnt"
    script = (
        f"cat {dst}/ro/f; touch {dst}/ro/new 2>/dev/null || echo ro-refused; "
        f"n=$(cat {dst}/vol/n 2>/dev/null || echo 0); echo $((n+1)) > {dst}/vol/n; "
        f"echo run $((n+1)); sleep 0.5; exit 1"
    )
    mk(m1, "service", "create", *on_w1("--name", "m", "--restart-delay", "0s",
       "--restart-max-attempts", "1",
       "--mount", f"type=bind,src={src},dst={dst}/ro,readonly",
       "--mount", f"type=volume,src=counter,dst={dst}/vol", "--", "sh", "-c", script))  # fmt: skip

    def logs() -> str:
        return run(m1, "service", "logs", "m").stdout

    until(lambda: "run 2" in logs(), 40, "the restarted task finds the volume's count")
    out = logs()
    assert "from the host" in out and "ro-refused" in out and "run 1" in out
    assert not (src / "new").exists()
    vol = w1.data / "volumes" / "counter" / "_data" / "n"
    assert vol.read_text() == "2\n"
    table = mk(w1, "volume", "ls").splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME"] and table[1].split() == [
        "local", "counter"
    ]  # fmt: skip
    mk(m1, "service", "rm", "m")

    def removable() -> bool:
        return run(w1, "volume", "rm", "counter").returncode == 0

    until(removable, 30, "the volume can go once no task uses it")
    assert not vol.exists() and mk(w1, "volume", "ls").splitlines()[1:] == []
    # in use: refused
    mk(m1, "service", "create", *on_w1("--name", "holder",
       "--mount", f"type=volume,src=held,dst={dst}/held", "--", "sleep", "60"))  # fmt: skip
    until(lambda: any(t["State"] == "running" for t in ps(m1, "holder")), 30, "holder runs")
    r = run(w1, "volume", "rm", "held")
    assert r.returncode != 0 and "remove held: volume is in use" in r.stderr
    mk(m1, "service", "rm", "holder")
    until(lambda: run(w1, "volume", "rm", "held").returncode == 0, 30, "held removed")
    # a missing bind source: the task's error, never a start without the mount
    missing = cluster.root / "srv-data"
    mk(m1, "service", "create", *on_w1("--name", "nosrc", "--restart-condition", "none",
       "--mount", f"type=bind,src={missing},dst=/data", "--", "true"))  # fmt: skip
    until(lambda: any(t["State"] == "rejected" for t in ps(m1, "nosrc")), 30, "rejected")
    assert ps(m1, "nosrc")[0]["Error"] == f"mount /data: source {missing} does not exist on node w1"
    mk(m1, "service", "rm", "nosrc")
    # bad values name the flag, before anything is sent
    r = run(m1, "service", "create", "--name", "x", "--limit-memory", "lots", "--", "true")
    assert r.returncode == 2 and "--limit-memory" in r.stderr
    r = run(m1, "service", "create", "--name", "x", "--mount", "type=tmpfs,dst=/t,tmpfs-mode=9",
            "--", "true")  # fmt: skip
    assert r.returncode == 2 and "--mount" in r.stderr and "octal" in r.stderr
