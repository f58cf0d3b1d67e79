"""Declared VIP ports through the kernel (MESHKIT_VIP_DECLARED=auto, the default) end to end,
on agents on namespace hosts (198.18.0.0/24): a service's declared ports are DNATed by the
overlay namespace's nftables table like its other ports (no relay listens on the VIP), new
flows alternate over the tasks, TCP and UDP, and doctor shows the VIP as `vip (nft)` with the
flows the table counted. (A task killed under load: the story test in test_mesh_netns.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from support.labutil import lab_cluster
from support.meshlab import Cluster
from support.polling import until

from .test_mesh_netns import ECHO, ask, wait_dig

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MESHKIT_VIP_DECLARED", "auto")  # the agents inherit it (the default too)
        with lab_cluster(Cluster, ("m1", "w1")) as c:
            yield c


def test_declared_ports_go_through_the_kernel_dnat(cluster: Cluster) -> None:
    c = cluster
    net = "declared"
    c.cli_ok("network", "create", "-d", "overlay", "--dataplane", "kernel", net)
    try:
        c.cli_ok(
            "service", "create", "--name", "echo", "--replicas", "2", "--network", net,
            "--port", "7000", "--port", "7000/udp", "--", sys.executable, ECHO, "7000",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "client", "--network", net,
            "--constraint", "node.hostname==m1", "--", "sleep", "3600",
        )  # fmt: skip
        until(lambda: len(c.running("echo")) == 2, 60, "echo running")
        client = until(lambda: (r := c.running("client")) and r[0], 60, "client running")
        nodes = {t["Node"] for t in c.running("echo")}
        vip = c.vip("echo", net)
        wait_dig(c, client, "echo", [vip])
        first = until(lambda: (a := ask(c, client, "echo", 7000)).startswith("node ") and a,
                      30, "echo:7000")  # fmt: skip
        tcp = {first.split(" from ")[0]} | {
            ask(c, client, "echo", 7000).split(" from ")[0] for _ in range(5)
        }
        assert tcp == {f"node {n}" for n in nodes}, tcp
        udp = {ask(c, client, "echo", 7000, "udp") for _ in range(6)}
        assert udp == {f"node {n}" for n in nodes}, udp
        # m1's table DNATs the declared ports (no `return` to a relay), and doctor says so
        info = json.loads(c.cli_ok("doctor", "--json", host="m1"))
        rows = [r for r in info["mesh"]["relays"] if r.get("service") == "echo"]
        assert len(rows) == 1 and rows[0]["path"] == "nft", rows
        assert rows[0]["listen"] == [f"{vip}:7000/tcp", f"{vip}:7000/udp"], rows
        assert info["mesh"]["vip_ports"]["path"] == "nft", info["mesh"]

        def counted() -> int | None:  # the counters are read in the background (2 s)
            d = json.loads(c.cli_ok("doctor", "--json", host="m1"))
            row = next(r for r in d["mesh"]["relays"] if r.get("service") == "echo")
            return row["flows_total"] if row["flows_total"] >= 12 else None

        until(counted, 20, "the declared-port flows counted by nft")
        text = c.cli_ok("doctor", host="m1")
        assert "vip (nft)" in text and " total" in text, text
    finally:
        for svc in ("client", "echo"):
            c.rm_service(svc)
        c.rm_network(net)
