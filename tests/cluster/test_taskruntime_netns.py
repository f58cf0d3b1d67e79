"""A task's runtime on an overlay network, on namespace hosts (198.18.0.0/15): the task's
resolv.conf keeps its DNS server (service names) first and adds `--dns`/`--dns-search`/
`--dns-option`; `--hostname` templates; limits and a tmpfs in the same task; its cgroup holds
its process and goes when the service does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.cluster.tasks import cgroups
from support.labutil import lab_cluster
from support.meshlab import Cluster as MeshCluster
from support.polling import until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(cgroups.host_setup().version == "none", reason="no cgroup controllers"),
]
PARENT = f"meshkit-nstest-{os.getpid()}"


class Cluster(MeshCluster):
    def remove(self, service: str) -> None:
        """Remove ``service`` and wait until its tasks' namespaces are gone too."""
        r = self.cli("service", "ps", service, "--format", "json")
        ids = [t["ID"] for t in self.tasks(service)] if r.returncode == 0 else []
        self.cli("service", "rm", service)
        until(lambda: self.cli("service", "ps", service).returncode != 0, 30, "removed")
        until(lambda: not any(Path(f"/run/netns/mk-{i}").exists() for i in ids), 30, "ns gone")


def parent_dirs() -> list[Path]:
    setup = cgroups.host_setup()
    roots = [setup.v2_root] if setup.version == "v2" else list(set(setup.v1.values()))
    return [Path(r, PARENT) for r in roots]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    os.environ[cgroups.PARENT_ENV] = PARENT
    try:
        with lab_cluster(Cluster, ("m1", "w1")) as c:
            yield c
    finally:
        os.environ.pop(cgroups.PARENT_ENV, None)
        left = [str(x) for d in parent_dirs() if d.exists() for x in d.iterdir() if x.is_dir()]
        for d in parent_dirs():
            if d.exists():
                for x in d.iterdir():
                    if x.is_dir():
                        cgroups.TaskCgroup("v1", [str(x)]).remove()
                d.rmdir()
        assert not left, f"task cgroups left behind: {left}"


def test_dns_hostname_limits_and_tmpfs_on_an_overlay(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli_ok("network", "create", "-d", "overlay", "rtnet")
    try:
        check_task_runtime(cluster, tmp_path)
    finally:  # the agents take down the task (its namespace, its cgroup) while they run
        cluster.remove("rtweb")
        cluster.rm_network("rtnet")


def check_task_runtime(cluster: Cluster, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    script = (
        "cat /etc/resolv.conf; echo host=$(hostname); getent hosts rtweb && echo resolved; "
        f"touch {scratch}/x && echo tmpfs-ok; exec sleep 600"
    )
    cluster.cli_ok(
        "service", "create", "--detach", "--name", "rtweb", "--network", "rtnet",
        "--constraint", "node.hostname==w1", "--hostname", "{{.Service.Name}}-{{.Task.Slot}}",
        "--dns", "192.0.2.53", "--dns-search", "corp.test", "--dns-option", "ndots:2",
        "--limit-memory", "64M", "--limit-cpu", "0.5",
        "--mount", f"type=tmpfs,dst={scratch}", "--", "sh", "-c", script,
    )  # fmt: skip

    def logs() -> str:
        return cluster.cli("service", "logs", "rtweb").stdout

    try:
        until(lambda: "tmpfs-ok" in logs(), 60, "the task's output")
    except AssertionError as exc:
        ps = cluster.cli("service", "ps", "--no-trunc", "rtweb").stdout
        raise AssertionError(f"{exc}\n{ps}\n{logs()}") from None
    out = [line.split("| ", 1)[-1] for line in logs().splitlines()]
    servers = [line for line in out if line.startswith("nameserver")]
    assert servers == ["nameserver 127.0.0.11", "nameserver 192.0.2.53"], out
    assert "search corp.test" in out and any("ndots:2" in line for line in out)
    assert "host=rtweb-1" in out and "resolved" in out  # service names still resolve
    assert not any(scratch.iterdir())
    (task,) = cluster.running("rtweb")
    dirs = [d / task["ID"] for d in parent_dirs() if (d / task["ID"]).is_dir()]
    assert dirs  # (v1: the hierarchies of its limits, memory and cpu)
    assert all(str(task["Pid"]) in (d / "cgroup.procs").read_text().split() for d in dirs)
    cluster.remove("rtweb")
    until(lambda: not any(d.exists() for d in dirs), 30, "the task's cgroup removed")
