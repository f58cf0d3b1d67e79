"""Outbound access through the gateway bridge, end to end, on namespace hosts (198.18.0.0/24).

Two nodes (m1 manager, w1 worker) and an "outside" host holding 203.0.113.10 (TEST-NET-3) on
the same hub, running a small HTTP server. The nodes reach 203.0.113.0/24 through the outside
host's underlay address; the outside host knows nothing of the nodes' gateway subnets
(198.19.255.0/24 and 198.19.254.0/24, from the end of the default pool), so a page coming back
proves the node masqueraded the task's traffic, and the server's log names the node's own
address. A task on an `--internal` network has no gateway interface: connecting out fails at
once (no route), while a service on the same overlay still answers. `meshkit doctor` says the
gateway works on both nodes; when w1 leaves the cluster, its nftables table and bridge go.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import netns
from support.meshlab import Cluster
from support.polling import until

pytestmark = pytest.mark.root

OUTSIDE_IP = "203.0.113.10"
PAGE = "hello from the outside"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Cluster, netns.Spawned]]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    if not any(os.access(p, os.X_OK) for p in ("/usr/sbin/nft", "/sbin/nft")):
        pytest.skip("nft is not installed (Debian's nftables; scripts/install-test-deps)")
    nl = netns.NetnsLab()
    c = Cluster(nl)
    try:
        for h in ("m1", "w1", "outside"):
            nl.add_host(h)
        # the outside world: 203.0.113.10 on the outside host, known to the nodes by a route
        # through the outside host's underlay address; the outside has no route back to any
        # gateway subnet (only its own 198.18.0.0/24)
        nl.run("outside", ["ip", "addr", "add", f"{OUTSIDE_IP}/32", "dev", "lo"])
        for h in ("m1", "w1"):
            nl.run(h, ["ip", "route", "add", "203.0.113.0/24", "via", nl.addr("outside")])
        site = tmp_path / "site"
        site.mkdir()
        (site / "index.html").write_text(PAGE + "\n")
        server = nl.spawn(
            "outside",
            [sys.executable, "-m", "http.server", "80", "--bind", OUTSIDE_IP, "-d", str(site)],
        )
        until(
            lambda: nl.run("outside", ["curl", "-sS", f"http://{OUTSIDE_IP}/"], check=False)
            .stdout.strip() == PAGE,
            20,
            "the outside server up",
        )
        c.start_cluster("m1", ("w1",))
        yield c, server
    finally:
        try:
            c.close()
        finally:
            nl.close()


def curl(c: Cluster, task: dict[str, Any], url: str, max_time: str = "5") -> tuple[int, str, float]:
    start = time.monotonic()
    r = c.in_task(task, "curl", "-sS", "--max-time", max_time, url)
    return r.returncode, (r.stdout + r.stderr).strip(), time.monotonic() - start


def one_running(c: Cluster, name: str) -> dict[str, Any]:
    return until(lambda: (r := c.running(name)) and r[0], 60, f"{name} running")


def links_in_task(c: Cluster, task: dict[str, Any]) -> set[str]:
    out = c.in_task(task, "ip", "-j", "link", "show").stdout
    return {link["ifname"] for link in json.loads(out)}


def gateways(c: Cluster) -> dict[str, Any] | None:
    r = c.cli("doctor", "--json")
    if r.returncode != 0:
        return None
    gws = json.loads(r.stdout).get("gateways") or {}
    return gws if set(gws) == {"m1", "w1"} and all(g and g["ok"] for g in gws.values()) else None


def test_tasks_reach_the_outside_masqueraded_internal_networks_do_not(
    world: tuple[Cluster, netns.Spawned], tmp_path: Path
) -> None:
    c, server = world
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    (peer_dir / "index.html").write_text("the peer\n")
    os.chmod(tmp_path, 0o755)
    c.cli_ok("network", "create", "-d", "overlay", "front")
    c.cli_ok("network", "create", "-d", "overlay", "--internal", "back")
    views = {v["Name"]: v for v in json.loads(c.cli_ok("network", "ls", "--format", "json"))}
    assert views["back"]["Internal"] is True and views["front"]["Internal"] is False
    inspected = json.loads(c.cli_ok("network", "inspect", "back"))[0]
    assert inspected["Internal"] is True
    try:
        c.cli_ok(
            "service", "create", "--name", "fetch", "--network", "front",
            "--constraint", "node.hostname==w1", "--", "sleep", "3600",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "inside", "--network", "back",
            "--constraint", "node.hostname==w1", "--", "sleep", "3600",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "peer", "--network", "back", "--port", "8080",
            "--constraint", "node.hostname==m1", "--workdir", str(peer_dir), "--",
            sys.executable, "-m", "http.server", "8080",
        )  # fmt: skip
        fetch = one_running(c, "fetch")
        inside = one_running(c, "inside")
        one_running(c, "peer")

        # the task on a normal overlay: gw0, a default route through it, and the page
        assert {"eth0", "gw0"} <= links_in_task(c, fetch)
        route = c.in_task(fetch, "ip", "route", "show", "default").stdout
        assert "dev gw0" in route and "198.19." in route, route
        code, page, _ = curl(c, fetch, f"http://{OUTSIDE_IP}/")
        assert code == 0 and page == PAGE, page
        # the outside server saw the node's underlay address (masqueraded), not the task's
        log = until(
            lambda: (out := server.output()) and "GET / " in out and out, 10, "server log"
        )
        clients = {line.split()[0] for line in log.splitlines() if "GET / " in line}
        assert c.lab.addr("w1") in clients, log
        assert not any(addr.startswith("198.19.") for addr in clients), log

        # the task on an internal network only: no gw0, no way out, fails at once
        assert "gw0" not in links_in_task(c, inside)
        code, text, took = curl(c, inside, f"http://{OUTSIDE_IP}/", max_time="10")
        assert code != 0 and took < 3.0, (code, text, took)
        assert "unreachable" in text.lower() or "couldn't connect" in text.lower(), text
        # ... but the overlay still works: the other service by name, through its VIP
        got = until(
            lambda: (r := curl(c, inside, "http://peer:8080/"))[0] == 0 and r[1], 30, "peer"
        )
        assert got == "the peer"

        # doctor: the gateway works on both nodes
        gws = until(lambda: gateways(c), 30, "doctor shows both gateways ok")
        assert gws["w1"]["nat"] and gws["w1"]["forwarding"], gws
        text = c.cli_ok("doctor")
        assert "Gateway (tasks' outbound access)" in text and "meshkit_gwbr" in text, text
    finally:
        for name in ("fetch", "inside", "peer"):
            c.rm_service(name)
        c.rm_network("front")
        c.rm_network("back")

    # a node that leaves takes its gateway with it: no nftables table, no bridge
    assert c.lab.run("w1", ["nft", "list", "table", "ip", "meshkit"], check=False).returncode == 0
    c.ok("w1", "leave")
    c.procs["w1"].popen.wait(30)
    until(
        lambda: c.lab.run("w1", ["nft", "list", "table", "ip", "meshkit"], check=False).returncode
        != 0,
        10,
        "w1's nftables table removed",
    )
    link = c.lab.run("w1", ["ip", "link", "show", "meshkit_gwbr"], check=False)
    assert link.returncode != 0, link.stdout
