"""Service discovery, VIPs and the routing mesh end to end: the story's scenario on agents on
namespace hosts (198.18.0.0/24), with both data planes.

Two replicas of `meshkit web` (on m1 and w1), each serving a page naming its node, and a client
task on m1: from the client, `dig web` gives the VIP, 20 requests to http://web:8080/ all succeed
and the two pages come back in turn, the published port 8091 answers on all three nodes (w2 has
no task), and while one replica is killed and restarts every request still succeeds. Then the
other names (tasks.NAME, task names, dnsrr, SRV, PTR, NXDOMAIN), UDP through a VIP, and the
PROXY protocol v2 header seen by a task.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.labutil import Lab, lab_cluster, until

pytestmark = pytest.mark.root

HOSTS = ("m1", "w1", "w2")
PAGE_CMD = (
    'mkdir -p "$HOSTNAME" && echo "node $HOSTNAME" > "$HOSTNAME/index.html" && '
    f'exec {sys.executable} -m meshkit web -quiet -port 8080 -root "$HOSTNAME"'
)


class Cluster(Lab):
    def rm_network(self, name: str) -> None:
        until(lambda: self.cli("network", "rm", name).returncode == 0, 30, f"network {name} rm")

    def in_task(
        self, task: dict[str, Any], *argv: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run in a task's namespace, with its resolv.conf (127.0.0.11), as the task sees it."""
        pid = self.procs[task["Node"]].popen.pid
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "ip", "netns", "exec", f"mk-{task['ID']}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def vip(self, service: str, network: str) -> str:
        view = json.loads(self.cli_ok("service", "inspect", service))
        view = view[0] if isinstance(view, list) else view
        return next(v["Addr"] for v in view["Endpoint"]["VirtualIPs"] if v["Network"] == network)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, HOSTS) as c:
        yield c


@pytest.fixture
def site(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o777)
    return tmp_path


def dig(c: Cluster, task: dict[str, Any], *args: str) -> list[str]:
    r = c.in_task(task, "dig", "+short", "+time=2", "+tries=1", *args)
    if r.returncode != 0:
        return [f"FAILED: {r.stdout.strip()} {r.stderr.strip()}"]
    return [line for line in r.stdout.splitlines() if line]


def curl(c: Cluster, task: dict[str, Any], url: str) -> str:
    r = c.in_task(task, "curl", "-sS", "--max-time", "5", url)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()}"


def host_curl(c: Cluster, host: str, url: str) -> str:
    r = c.lab.run(host, ["curl", "-sS", "--max-time", "5", url], check=False)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()}"


def ok(text: str) -> str | None:
    return None if text.startswith("FAILED") else text


def web_and_client(
    c: Cluster, net: str, site: Path, *extra: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    c.cli_ok(
        "service", "create", "--name", "web", "--replicas", "2", "--network", net,
        "--constraint", "node.hostname!=w2", "--workdir", str(site), "--port", "8080",
        *extra, "--", "/bin/sh", "-c", PAGE_CMD,
    )  # fmt: skip
    c.cli_ok(
        "service", "create", "--name", "client", "--network", net,
        "--constraint", "node.hostname==m1", "--", "sleep", "3600",
    )  # fmt: skip
    webs = until(lambda: r if len(r := c.running("web")) == 2 else None, 60, "web running")
    assert sorted(t["Node"] for t in webs) == ["m1", "w1"]
    client = until(lambda: (r := c.running("client")) and r[0], 60, "client running")
    return webs, client


@pytest.mark.parametrize("plane", ["kernel", "userspace"])
def test_the_story_vip_dns_and_routing_mesh(cluster: Cluster, site: Path, plane: str) -> None:
    c = cluster
    net = f"mesh-{plane}"
    c.cli_ok("network", "create", "-d", "overlay", "--dataplane", plane, net)
    try:
        webs, client = web_and_client(c, net, site, "--publish", "8091:8080")
        vip = c.vip("web", net)
        # the VIP from 127.0.0.11, as the story's `dig mynginx`
        assert until(lambda: dig(c, client, "web") == [vip], 20, "dig web")
        # 20 requests through the VIP: all answered, the two pages in turn
        pages = [curl(c, client, "http://web:8080/") for _ in range(20)]
        assert not [p for p in pages if p.startswith("FAILED")], pages
        assert set(pages) == {"node m1", "node w1"}, pages
        assert all(a != b for a, b in itertools.pairwise(pages)), pages
        # the published port on every node, also w2 which has no task
        for host in HOSTS:
            url = f"http://{c.lab.addr(host)}:8091/"
            got = {
                until(lambda u=url: ok(host_curl(c, "w2", u)), 20, f"8091 on {host}")
                for _ in range(4)
            }
            assert got == {"node m1", "node w1"}, (host, got)
        # kill one replica's process: every following request is still answered
        victim = next(t for t in webs if t["Node"] == "w1")
        os.kill(int(victim["Pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 8
        answers = []
        while time.monotonic() < deadline:
            answers.append(curl(c, client, "http://web:8080/"))
            answers.append(host_curl(c, "w2", f"http://{c.lab.addr('w2')}:8091/"))
        assert answers and not [a for a in answers if a.startswith("FAILED")], answers
        # the restarted replica comes back into rotation
        until(lambda: len(c.running("web")) == 2, 60, "web restarted")
        both = {"node m1", "node w1"}
        until(
            lambda: {curl(c, client, "http://web:8080/") for _ in range(4)} == both,
            20,
            "both pages again",
        )
    finally:
        for svc in ("client", "web"):
            c.rm_service(svc)
        c.rm_network(net)
