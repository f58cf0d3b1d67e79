"""Overlay networks end to end: agents on namespace hosts (198.18.0.0/24, underlay MTU 1400),
`meshkit network` and `meshkit service --network`, with both data planes.

The story's case: tasks on two nodes of one overlay reach each other both ways (ICMP and
TCP), a 50 MB transfer crosses with an underlay MTU of 1400, and traffic between two tasks on
one node never leaves it. Then the failure the story could not name: udp/4789 dropped between
two hosts, found by `meshkit doctor` and `node ls` while the control plane still works.
Then addresses reused on another node without stale FDB entries (moby#52661).

One cluster (m1 manager, w1 and w2 workers) serves the module; every test removes its services
and networks. The overlay namespaces the agents made are removed at the end even when a test
failed.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.labutil import Lab, lab_cluster
from support.nettools import drop_udp_port_program, ping
from support.polling import until

pytestmark = pytest.mark.root

HOSTS = ("m1", "w1", "w2")
UNDERLAY_MTU = 1400
BIG = 50 * 1024 * 1024
HOST_RESOLV = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""


class Cluster(Lab):
    def rm_network(self, name: str) -> None:
        # tasks give their addresses back once they have ended
        until(lambda: self.cli("network", "rm", name).returncode == 0, 30, f"network {name} rm")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, HOSTS, mtu=UNDERLAY_MTU) as c:
        yield c


def task_ns(task: dict[str, Any]) -> str:
    return f"mk-{task['ID']}"


def addr(task: dict[str, Any]) -> str:
    return str(task["Networks"][0]["Addr"].split("/")[0])


def in_ns(
    c: Cluster, host: str, ns: str, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run in a namespace the agent on `host` made: agents run under `ip netns exec`, which
    gives them a mount namespace of their own, so their /run/netns mounts are only seen from
    there (a real agent lives in the host's own mount namespace)."""
    pid = c.procs[host].popen.pid
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ping_from(c: Cluster, task: dict[str, Any], dst: str) -> bool:
    pid = c.procs[task["Node"]].popen.pid
    return bool(nsenter_mount(pid, lambda: ping(task_ns(task), dst)))


def nsenter_mount(pid: int, fn: Any) -> Any:
    """Call fn in a thread that entered `pid`'s mount namespace (to see its /run/netns)."""
    import threading

    out: list[Any] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        try:
            # a thread may switch mount namespace once its fs info is its own
            assert libc.unshare(0x00000200) == 0, os.strerror(ctypes.get_errno())  # CLONE_FS
            assert libc.setns(fd, 0x00020000) == 0, os.strerror(ctypes.get_errno())  # NEWNS
        finally:
            os.close(fd)
        out.append(fn())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0] if out else None


def host_bytes(c: Cluster, host: str) -> int:
    """Bytes the host sent on its underlay interface."""
    path = "/sys/class/net/eth0/statistics/tx_bytes"
    out = c.lab.run(host, ["cat", path], check=False)
    return int(out.stdout.strip())


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A folder with a 50 MB file, for the tasks' web servers."""
    os.chmod(tmp_path, 0o755)
    (tmp_path / "big").write_bytes(os.urandom(1024 * 1024) * 50)
    (tmp_path / "hello").write_text("hello\n")
    return tmp_path


@pytest.mark.parametrize("plane", ["kernel", "userspace"])
def test_tasks_on_two_nodes_reach_each_other(cluster: Cluster, served: Path, plane: str) -> None:
    net = f"story-{plane}"
    out = cluster.cli_ok("network", "create", "-d", "overlay", "--dataplane", plane, net)
    assert len(out.strip()) == 25
    svc = f"web-{plane}"
    try:
        cluster.cli_ok(
            "service", "create", "--name", svc, "--replicas", "3", "--network", net,
            "--constraint", "node.hostname!=w2", "--workdir", str(served),
            "--", sys.executable, "-m", "http.server", "8000",
        )  # fmt: skip
        tasks = cluster.running(svc)
        assert len(tasks) == 3
        by_node: dict[str, list[dict[str, Any]]] = {}
        for t in tasks:
            by_node.setdefault(t["Node"], []).append(t)
        assert sorted(by_node) == ["m1", "w1"]
        pair = [by_node["m1"][0], by_node["w1"][0]]
        # the task's side of the network: its address, the overlay MTU, 127.0.0.11 as resolver
        shown = in_ns(
            cluster, pair[0]["Node"], task_ns(pair[0]), "ip", "-j", "addr", "show", "eth0"
        )
        assert shown.returncode == 0, shown.stderr
        link = json.loads(shown.stdout)[0]
        assert link["mtu"] == UNDERLAY_MTU - 50
        assert any(a["local"] == addr(pair[0]) for a in link["addr_info"])
        resolv = in_ns(cluster, pair[0]["Node"], task_ns(pair[0]), "cat", "/etc/resolv.conf").stdout
        assert "nameserver 127.0.0.11" in resolv
        # the task process itself sees it (its own mount namespace), the host keeps its own
        seen = Path(f"/proc/{pair[0]['Pid']}/root/etc/resolv.conf").read_text()
        assert seen.startswith("nameserver 127.0.0.11")
        assert Path("/etc/resolv.conf").read_text() == HOST_RESOLV
        inspect = json.loads(cluster.cli_ok("network", "inspect", net))[0]
        assert inspect["Options"]["dataplane"] == plane

        def planes() -> set[str]:
            view = json.loads(cluster.cli_ok("network", "inspect", net))[0]
            return set(view["DataPlanes"].values())

        until(lambda: planes() == {plane}, 30, "data planes reported")

        # both ways: ICMP and TCP
        a, b = pair
        assert until(lambda: ping_from(cluster, a, addr(b)), 20, "ping m1 -> w1")
        assert ping_from(cluster, b, addr(a))
        for src, dst in ((a, b), (b, a)):
            r = in_ns(
                cluster,
                src["Node"],
                task_ns(src),
                "curl",
                "-sf",
                "--max-time",
                "10",
                f"http://{addr(dst)}:8000/hello",
            )
            assert r.stdout == "hello\n", r.stderr

        # 50 MB across nodes with the 1400-byte underlay
        r = in_ns(
            cluster, a["Node"], task_ns(a), "curl", "-sf", "--max-time", "100", "-o", "/dev/null",
            "-w", "%{size_download}", f"http://{addr(b)}:8000/big",
        )  # fmt: skip
        assert r.returncode == 0 and int(r.stdout) == BIG, r.stderr

        # two tasks on m1: a transfer between them does not leave the node
        local = by_node["m1"] if len(by_node["m1"]) == 2 else by_node["w1"]
        host = "m1" if local is by_node["m1"] else "w1"
        before = host_bytes(cluster, host)
        r = in_ns(
            cluster, host, task_ns(local[0]), "curl", "-sf", "--max-time", "60", "-o", "/dev/null",
            "-w", "%{size_download}", f"http://{addr(local[1])}:8000/big",
        )  # fmt: skip
        assert int(r.stdout) == BIG
        assert host_bytes(cluster, host) - before < BIG // 10
    finally:
        cluster.rm_service(svc)
        cluster.rm_network(net)


def block_vxlan(c: Cluster, host: str, port: int = 4789) -> None:
    """Drop what the host sends to udp/<port> on its underlay (a firewall between hosts; VXLAN
    goes to the port both ways, so nothing the host sends through the overlay arrives)."""
    c.lab.run(host, ["tc", "qdisc", "add", "dev", "eth0", "clsact"])
    c.lab.run(host, ["tc", "filter", "add", "dev", "eth0", "egress", "bpf", "da", "bytecode",
                     drop_udp_port_program(port)])  # fmt: skip


def unblock_vxlan(c: Cluster, host: str) -> None:
    c.lab.run(host, ["tc", "qdisc", "del", "dev", "eth0", "clsact"], check=False)


def test_doctor_names_a_blocked_vxlan_path(cluster: Cluster) -> None:
    net = "probed"
    cluster.cli_ok("network", "create", net)
    w1 = cluster.lab.addr("w1")
    try:

        def all_ok() -> bool:
            nodes = json.loads(cluster.cli_ok("node", "ls", "--format", "json"))
            return all(n["Overlay"] == "ok" for n in nodes)

        until(all_ok, 30, "every pair probed ok")
        block_vxlan(cluster, "w1")

        def blocked() -> list[dict[str, Any]]:
            report = json.loads(cluster.cli_ok("doctor", "--json"))
            return [p for p in report["pairs"] if p["health"] == "vxlan-blocked"]

        bad = until(blocked, 30, "doctor finds the blocked VXLAN path")
        assert all(w1 in (p["source"], p["target"]) for p in bad), bad
        assert all(p["control"] is True for p in bad)
        text = cluster.cli_ok("doctor")
        named = [ln for ln in text.splitlines() if w1 in ln and "firewall" in ln]
        assert named and all("control plane reachable" in ln for ln in named), text
        nodes = {
            n["Hostname"]: n for n in json.loads(cluster.cli_ok("node", "ls", "--format", "json"))
        }
        assert nodes["w1"]["Overlay"] != "ok" and nodes["w1"]["Status"] == "Ready"
        table = cluster.cli_ok("node", "ls")
        assert "OVERLAY" in table.splitlines()[0]

        # a worker has no cluster state: its doctor shows its own probes
        # its probes may find the block a moment after the managers' view of the pairs does
        def mine_blocked() -> dict[str, Any] | None:
            mine = json.loads(cluster.cli_ok("doctor", "--json", host="w1"))
            ok = mine["pairs"] and all(p["health"] == "vxlan-blocked" for p in mine["pairs"])
            return mine if ok else None

        mine = until(mine_blocked, 30, "the worker's own probes find the blocked path")
        assert mine["pairs"] and all(p["source"] == w1 for p in mine["pairs"])
        assert "worker" in mine["note"]

        unblock_vxlan(cluster, "w1")
        until(all_ok, 30, "the pairs clear after unblocking")
    finally:
        unblock_vxlan(cluster, "w1")
        cluster.rm_network(net)


def _fdb(c: Cluster, host: str, ns: str, dev: str) -> dict[str, str]:
    pid = c.procs[host].popen.pid
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
        capture_output=True,
        text=True,
    )
    return {e["mac"]: e["dst"] for e in json.loads(out.stdout or "[]") if e.get("dst")}


@pytest.mark.parametrize("plane", ["kernel", "userspace"])
def test_reused_address_moves_its_fdb_entry(cluster: Cluster, plane: str) -> None:
    """A /29 has room for the gateway, three node endpoints and two tasks (dnsrr services
    hold no VIP): the third task reuses the first one's address, on another node, and m1's
    entries follow it."""
    net = f"tiny-{plane}"
    cluster.cli_ok(
        "network", "create", "--subnet", "198.18.200.0/29", "--dataplane", plane, net
    )  # fmt: skip
    ids = cluster.node_ids()
    netid = json.loads(cluster.cli_ok("network", "inspect", net))[0]["ID"]
    ns_m1 = f"mkn-{netid[:8]}-{ids['m1'][:8]}"
    rr = ("--endpoint-mode", "dnsrr", "--network", net)
    try:
        cluster.cli_ok("service", "create", "--name", "client", *rr,
                       "--constraint", "node.hostname==m1", "--", "sleep", "1000")  # fmt: skip
        cluster.cli_ok("service", "create", "--name", "first", *rr,
                       "--constraint", "node.hostname==w1", "--", "sleep", "1000")  # fmt: skip
        first = cluster.running("first")[0]
        client = cluster.running("client")[0]
        mac = "02:4d:" + ":".join(f"{int(x):02x}" for x in addr(first).split("."))
        vni = json.loads(cluster.cli_ok("network", "inspect", net))[0]["Options"]["vni"]
        w1, w2 = cluster.lab.addr("w1"), cluster.lab.addr("w2")
        if plane == "kernel":
            until(lambda: _fdb(cluster, "m1", ns_m1, f"vx-{vni}").get(mac) == w1, 20, "fdb -> w1")
        reused = addr(first)
        assert until(lambda: ping_from(cluster, client, reused), 20, "the first task answers")
        cluster.rm_service("first")
        cluster.cli_ok("service", "create", "--name", "second", *rr,
                       "--constraint", "node.hostname==w2", "--", "sleep", "1000")  # fmt: skip
        second = cluster.running("second")[0]
        assert addr(second) == reused
        vni = json.loads(cluster.cli_ok("network", "inspect", net))[0]["Options"]["vni"]
        if plane == "kernel":
            until(
                lambda: _fdb(cluster, "m1", ns_m1, f"vx-{vni}").get(mac) == w2,
                20,
                "fdb -> w2",
            )
        assert until(lambda: ping_from(cluster, client, reused), 20, "the reused address answers")
        if plane == "userspace":
            # meshkit's own data plane counted the frames it sent to w2
            stats = json.loads(cluster.cli_ok("doctor", "--json"))["stats"]
            assert stats["peers"][w2]["tx_frames"] > 0, stats
        # a full network: the next task is rejected with the reason
        r = cluster.cli("service", "create", "--name", "third", "--detach", *rr,
                        "--", "sleep", "1000")  # fmt: skip
        assert r.returncode == 0, r.stderr
        until(lambda: any("no free address" in t["Error"] for t in cluster.tasks("third")), 20,
              "a task rejected for want of an address")  # fmt: skip
        cluster.rm_service("third")
        # the network is in use: rm says by whom
        r = cluster.cli("network", "rm", net)
        assert r.returncode != 0 and "in use by service" in r.stderr
    finally:
        for svc in ("client", "first", "second", "third"):
            cluster.cli("service", "rm", svc)
        cluster.rm_network(net)
    until(lambda: not os.path.exists(f"/run/netns/{ns_m1}"), 20, "m1's namespace removed")


def test_a_task_on_two_networks_gets_one_interface_on_each(cluster: Cluster) -> None:
    cluster.cli_ok("network", "create", "--subnet", "198.18.210.0/24", "left")
    cluster.cli_ok("network", "create", "--subnet", "198.18.211.0/24", "--opt", "mtu=1200", "right")
    try:
        cluster.cli_ok("service", "create", "--name", "both", "--network", "left",
                       "--network", "right", "--constraint", "node.hostname==w1",
                       "--", "sleep", "1000")  # fmt: skip
        task = cluster.running("both")[0]
        nets = {n["Name"]: n["Addr"] for n in task["Networks"]}
        assert nets["left"].startswith("198.18.210.") and nets["right"].startswith("198.18.211.")
        for ifname, net, mtu in (("eth0", "left", UNDERLAY_MTU - 50), ("eth1", "right", 1200)):
            shown = in_ns(cluster, "w1", task_ns(task), "ip", "-j", "addr", "show", ifname)
            assert shown.returncode == 0, shown.stderr
            link = json.loads(shown.stdout)[0]
            assert link["mtu"] == mtu
            ip, prefix = nets[net].split("/")
            assert any(
                a["local"] == ip and a["prefixlen"] == int(prefix) for a in link["addr_info"]
            )
    finally:
        cluster.cli("service", "rm", "both")
        cluster.rm_network("left")
        cluster.rm_network("right")


def test_one_data_plane_per_port_on_a_node(cluster: Cluster) -> None:
    """The kernel's VXLAN socket and meshkit's cannot share udp/4789: `auto` follows the plane
    a node already runs, and a network asking for the other one is named as unbuildable."""
    cluster.cli_ok("network", "create", "--dataplane", "userspace", "user1")
    cluster.cli_ok("network", "create", "user2")  # auto
    cluster.cli_ok("network", "create", "--dataplane", "kernel", "kern1")
    try:

        def planes(net: str) -> set[str]:
            view = json.loads(cluster.cli_ok("network", "inspect", net))[0]
            return set(view["DataPlanes"].values())

        try:
            until(lambda: planes("user2") == {"userspace"}, 30, "auto follows userspace")
        except AssertionError as exc:  # say why: the nodes' network errors
            report = json.loads(cluster.cli_ok("doctor", "--json"))
            raise AssertionError(f"{exc}; planes {planes('user1')}/{planes('user2')}; "
                                 f"errors {report['network_errors']}") from None  # fmt: skip

        def refused() -> list[str]:
            report = json.loads(cluster.cli_ok("doctor", "--json"))
            return [e for e in report["network_errors"] if "network kern1:" in e]

        errors = until(lambda: len(refused()) == 3 and refused(), 30, "kern1 refused everywhere")
        assert all("udp/4789 is taken by the userspace data plane of network user" in e
                   for e in errors)  # fmt: skip
        nodes = json.loads(cluster.cli_ok("node", "ls", "--format", "json"))
        assert all(n["Overlay"].startswith("cannot build kern1") for n in nodes)
    finally:
        for net in ("kern1", "user2", "user1"):
            cluster.rm_network(net)
