"""The relay path of a VIP on every port, end to end: agents started with MESHKIT_VIP_PATH=relay
(as a node whose nf_tables lacks the NAT expressions of the kernel path would choose), two
nodes on namespace hosts (198.18.0.0/24).

`db` (on w1) declares no port; from a client task on m1, two undeclared TCP ports answer
through the VIP: nftables redirects them to m1's relay, which reads the port the client asked
for with SO_ORIGINAL_DST and connects to the task on it; UDP is handed to it by tproxy. A
declared port still has its own relay. doctor names the path per node; when the task leaves,
new connections are refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import labutil
from support.meshlab import Cluster
from support.polling import until

pytestmark = pytest.mark.root

ECHO = str(Path(__file__).with_name("mesh_echo.py"))
ASK = """
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.connect((host, port)); s.send(b"hi"); print(s.recv(200).decode())
else:
    s = socket.create_connection((host, port), timeout=3)
    print(s.makefile().readline().strip())
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    labutil.ENV["MESHKIT_VIP_PATH"] = "relay"
    try:
        with labutil.lab_cluster(Cluster, ("m1", "w1")) as c:
            yield c
    finally:
        del labutil.ENV["MESHKIT_VIP_PATH"]


def ask(c: Cluster, task: dict[str, Any], host: str, port: int, proto: str = "tcp") -> str:
    r = c.in_task(task, sys.executable, "-c", ASK, host, str(port), proto)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"


def test_undeclared_ports_through_the_so_original_dst_relay(cluster: Cluster) -> None:
    c = cluster
    c.cli_ok("network", "create", "-d", "overlay", "rnet")
    try:
        c.cli_ok(
            "service", "create", "--name", "db", "--network", "rnet", "--port", "7002",
            "--constraint", "node.hostname==w1", "--", "/bin/sh", "-c",
            f"{sys.executable} {ECHO} 7001 & {sys.executable} {ECHO} 7002 & "
            f"exec {sys.executable} {ECHO} 5432",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "client", "--network", "rnet",
            "--constraint", "node.hostname==m1", "--", "sleep", "3600",
        )  # fmt: skip
        until(lambda: c.running("db"), 60, "db running")
        client = until(lambda: (r := c.running("client")) and r[0], 60, "client running")
        # the relay connects from m1's overlay namespace: the task sees m1's endpoint address
        got = until(lambda: (a := ask(c, client, "db", 5432)).startswith("node w1") and a, 30,
                    "db:5432 through the relay")  # fmt: skip
        assert ask(c, client, "db", 7001).startswith("node w1 from ")
        assert ask(c, client, "db", 7002).startswith("node w1 from ")  # the declared port
        # UDP on an undeclared port: tproxy to the relay, which answers from the VIP and port
        assert ask(c, client, "db", 7001, "udp") == "node w1"
        assert ask(c, client, "db", 5432, "udp") == "node w1"
        info = json.loads(c.cli_ok("doctor", "--json"))
        assert info["mesh"]["vip_ports"]["path"] == "relay", info["mesh"]
        assert "SO_ORIGINAL_DST" in info["mesh"]["vip_ports"]["why"]
        assert "m1: relay" in until(
            lambda: (t := c.cli_ok("doctor")) and "w1: relay" in t and t, 30, "doctor by node"
        )
        client_ip = got.split()[-1]
        assert client_ip.startswith("198.19."), got

        # the task leaves: the relay has no task for the VIP, a new flow is refused at once
        c.cli_ok("service", "scale", "db=0")
        until(lambda: not c.running("db"), 60, "db gone")
        until(lambda: ask(c, client, "db", 5432).startswith("FAILED"), 20, "no new flow")
        assert ask(c, client, "db", 7001).startswith("FAILED")
    finally:
        for name in ("db", "client"):
            c.rm_service(name)
        c.rm_network("rnet")
