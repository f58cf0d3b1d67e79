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

from support.labutil import lab_cluster
from support.meshlab import Cluster, dig
from support.polling import until

pytestmark = pytest.mark.root

HOSTS = ("m1", "w1", "w2")
PAGE_CMD = (
    'mkdir -p "$HOSTNAME" && echo "node $HOSTNAME" > "$HOSTNAME/index.html" && '
    f'exec {sys.executable} -m meshkit web -quiet -port 8080 -root "$HOSTNAME"'
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, HOSTS) as c:
        yield c


@pytest.fixture
def site(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o777)
    return tmp_path


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
        wait_dig(c, client, "web", [vip])
        # 20 requests through the VIP: all answered, the two pages in turn
        pages = [curl(c, client, "http://web:8080/") for _ in range(20)]
        assert not [p for p in pages if p.startswith("FAILED")], pages
        assert set(pages) == {"node m1", "node w1"}, pages
        assert all(a != b for a, b in itertools.pairwise(pages)), pages
        # the client's node answered the VIP's ARP itself (its own bridge's MAC)
        net_id = json.loads(c.cli_ok("network", "inspect", net))[0]["ID"]
        bridge_ns = f"mkn-{net_id[:8]}-{c.node_ids()['m1'][:8]}"
        agent = str(c.procs["m1"].popen.pid)
        br0 = subprocess.run(
            ["nsenter", "-t", agent, "-m", "ip", "-n", bridge_ns, "-j", "link", "show", "br0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        neigh = c.in_task(client, "ip", "-j", "neigh", "show", vip).stdout
        assert json.loads(neigh)[0]["lladdr"] == json.loads(br0)[0]["address"], (neigh, br0)
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
        # a request already queued on the dying process's listener is reset when its sockets
        # close, as with any server killed: the ones that follow must all be answered
        until(lambda: _exited(int(victim["Pid"])), 10, "the killed replica's sockets closed")
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
        # ingress (an `auto` network) was built on this plane; a node runs one data plane per
        # data-path port and an auto network does not move to the other, so the next plane's
        # run starts once no node runs ingress any more (the managers coalesce map rebuilds:
        # its removal and its next use can otherwise reach a node as one map)
        until(lambda: not _ingress_planes(c), 60, "ingress gone from every node")


def _ingress_planes(c: Cluster) -> dict[str, str]:
    r = c.cli("network", "inspect", "ingress")
    if r.returncode != 0:
        return {}
    return dict(json.loads(r.stdout)[0].get("DataPlanes") or {})


ECHO = str(Path(__file__).with_name("mesh_echo.py"))
ASK = (
    "import socket, sys\n"
    "host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
    "if proto == 'udp':\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
    "    s.sendto(b'hi', (host, port)); print(s.recv(200).decode())\n"
    "else:\n"
    "    s = socket.create_connection((host, port), 3); s.settimeout(3)\n"
    "    print(s.recv(200).decode().strip())\n"
)


def ask(c: Cluster, task: dict[str, Any], host: str, port: int, proto: str = "tcp") -> str:
    """One exchange with mesh_echo.py from inside a task (names resolve through 127.0.0.11)."""
    r = c.in_task(task, sys.executable, "-c", ASK, host, str(port), proto)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"


def host_ask(c: Cluster, host: str, addr: str, port: int) -> str:
    r = c.lab.run(host, [sys.executable, "-c", ASK, addr, str(port), "tcp"], check=False)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"


def wait_dig(c: Cluster, task: dict[str, Any], name: str, want: list[str]) -> None:
    """Wait until `dig name` in the task gives `want`; else fail with what dig and the task's
    agent said."""
    try:
        until(lambda: dig(c, task, name) == want, 20, f"dig {name} = {want}")
    except AssertionError:
        from meshkit.cluster.rpc.local import call

        mesh = call(c.sock(task["Node"]), "info").get("mesh")
        raise AssertionError(
            f"dig {name} never gave {want}:\n{dig_full(c, task, name)}\n"
            f"sockets: {c.in_task(task, 'ss', '-lunp').stdout}\n"
            f"mesh: {json.dumps(mesh)[:3000]}\n"
            f"agent log:\n{c.procs[task['Node']].output()[-4000:]}"
        ) from None


def dig_full(c: Cluster, task: dict[str, Any], *args: str) -> str:
    return c.in_task(task, "dig", "+time=3", "+tries=2", *args).stdout


def test_names_dnsrr_udp_host_mode_and_proxy_protocol(cluster: Cluster) -> None:
    c = cluster
    net = "names"
    c.cli_ok("network", "create", "-d", "overlay", "--dataplane", "kernel", net)
    made = ["echo", "rr", "pp", "hostmode", "client"]
    try:
        common = ("--network", net, "--constraint", "node.hostname!=w2")
        c.cli_ok(
            "service", "create", "--name", "echo", "--replicas", "2", *common,
            "--port", "7000", "--port", "7000/udp", "--", sys.executable, ECHO, "7000",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "rr", "--replicas", "2", *common,
            "--endpoint-mode", "dnsrr", "--", sys.executable, ECHO, "7001",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "pp", *common, "--publish",
            "8093:7002,proxy-protocol=v2", "--",
            sys.executable, ECHO, "7002", "--proxy-protocol",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "hostmode", "--network", net,
            "--constraint", "node.hostname==w1",
            "--publish", "mode=host,published=8094,target=7003",
            "--", sys.executable, ECHO, "7003",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "client", "--network", net,
            "--constraint", "node.hostname==m1", "--", "sleep", "3600",
        )  # fmt: skip
        for name, n in (("echo", 2), ("rr", 2), ("pp", 1), ("hostmode", 1), ("client", 1)):
            until(lambda name=name, n=n: len(c.running(name)) == n, 60, f"{name} running")
        client = c.running("client")[0]
        echo_ips = sorted(t["Networks"][0]["Addr"].split("/")[0] for t in c.running("echo"))
        rr_ips = sorted(t["Networks"][0]["Addr"].split("/")[0] for t in c.running("rr"))
        vip = c.vip("echo", net)

        # names: the VIP, tasks.NAME, dnsrr, a task's name, SRV, PTR, NXDOMAIN
        wait_dig(c, client, "echo", [vip])
        assert sorted(dig(c, client, "tasks.echo")) == echo_ips
        assert sorted(dig(c, client, "rr")) == rr_ips
        assert sorted(dig(c, client, "tasks.rr")) == rr_ips
        slot1 = next(t for t in c.running("echo") if t["Name"] == "echo.1")
        assert dig(c, client, "echo.1") == [slot1["Networks"][0]["Addr"].split("/")[0]]
        srv = dig(c, client, "SRV", "_7000._tcp.echo")
        assert sorted(line.split()[2] for line in srv) == ["7000", "7000"], srv
        assert dig(c, client, "-x", vip) == ["echo."]
        assert "status: NXDOMAIN" in dig_full(c, client, "nosuch")
        assert dig(c, client, "AAAA", "echo") == []
        # TCP and UDP through the VIP reach both tasks
        tcp = {ask(c, client, "echo", 7000).split(" from ")[0] for _ in range(6)}
        assert tcp == {"node m1", "node w1"}, tcp
        udp = {ask(c, client, "echo", 7000, "udp") for _ in range(8)}
        assert udp == {"node m1", "node w1"}, udp
        # PROXY protocol v2: the task sees w2's own address, not the relaying node's
        w2 = c.lab.addr("w2")
        for host in ("m1", "w2"):
            got = until(
                lambda h=host: ok(host_ask(c, "w2", c.lab.addr(h), 8093)), 20, "8093 answers"
            )
            assert got.endswith(f"from {w2}"), got
        # host mode: only the node running the task listens, straight to its task
        assert until(lambda: ok(host_ask(c, "w2", c.lab.addr("w1"), 8094)), 20, "8094 on w1")
        assert host_ask(c, "w2", c.lab.addr("m1"), 8094).startswith("FAILED")
        # doctor shows the node's relays, and a published port something else holds there
        blocker = c.lab.spawn("w1", [sys.executable, "-m", "http.server", "8096"])
        try:
            until(lambda: ok(host_curl(c, "w2", f"http://{c.lab.addr('w1')}:8096/")), 20, "blocker")
            c.cli_ok("service", "update", "--publish-add", "8096:7000", "echo")
            doctor = until(
                lambda: "8096" in (d := c.cli("doctor", host="w1").stdout) and d, 30, "doctor"
            )
            assert "Service mesh on this node:" in doctor and "echo" in doctor, doctor
            assert "cannot listen on 0.0.0.0:8096/tcp: port already in use" in doctor, doctor
        finally:
            c.lab.stop(blocker)
        # a task that goes away leaves tasks.NAME at once, and the VIP keeps answering
        c.cli_ok("service", "scale", "echo=1")
        until(lambda: len(dig(c, client, "tasks.echo")) == 1, 10, "tasks.echo shrinks")
        assert ask(c, client, "echo", 7000).startswith("node ")
    finally:
        for svc in made:
            c.rm_service(svc)
        c.rm_network(net)


def test_the_agents_web_server_follows_a_service(cluster: Cluster, site: Path) -> None:
    """`node run --web Caddyfile` on w2 (no task there): a proxy to service://web:8080 reaches
    the replicas on m1 and w1 in turn, and a replica that goes away is taken out at once."""
    c = cluster
    net = "webnet"
    # (not in the replicas' folder: `meshkit web` there would take it as its own Caddyfile)
    conf = site / "conf"
    conf.mkdir()
    caddyfile = conf / "Caddyfile"
    caddyfile.write_text(":8095\nproxy / service://web:8080 {\n    policy round_robin\n}\n")
    c.cli_ok("network", "create", "-d", "overlay", "--dataplane", "kernel", net)
    try:
        c.cli_ok(
            "service", "create", "--name", "web", "--replicas", "2", "--network", net,
            "--constraint", "node.hostname!=w2", "--workdir", str(site), "--port", "8080",
            "--", "/bin/sh", "-c", PAGE_CMD,
        )  # fmt: skip
        until(lambda: len(c.running("web")) == 2, 60, "web running")
        # a broken Caddyfile is refused with its file:line before the agent restarts
        bad = conf / "Bad"
        bad.write_text(":8096\nproxy / service://web\n")
        r = c.node("w2", "run", "--data-dir", str(c.data("w2")), "--web", str(bad))
        assert r.returncode != 0 and f"{bad}:2" in r.stderr, r.stderr
        c.kill("w2")
        c.start("w2", "run", "--web", str(caddyfile))
        url = f"http://{c.lab.addr('w2')}:8095/"
        # the first answers may come before w2's agent has the network map (502: no up task)
        until(lambda: host_curl(c, "m1", url).startswith("node "), 30, "8095 on w2")
        pages = [until(lambda: ok(host_curl(c, "m1", url)), 30, "8095 on w2") for _ in range(6)]
        assert set(pages) == {"node m1", "node w1"}, (pages, c.procs["w2"].output()[-3000:])
        # the same relay as the routing mesh, as a process of its own fed by w2's agent
        ingress = c.lab.spawn(
            "w2",
            [sys.executable, "-m", "meshkit", "ingress", "--publish", "8097:8080",
             "--service", "web", "--host", c.sock("w2")],
        )  # fmt: skip
        try:
            relayed = f"http://{c.lab.addr('w2')}:8097/"
            got = {
                until(lambda: ok(host_curl(c, "m1", relayed)), 30, "8097 on w2") for _ in range(6)
            }
            assert got == {"node m1", "node w1"}, (got, ingress.output())
            c.cli_ok("service", "scale", "web=1")
            until(lambda: len(c.running("web")) == 1, 30, "web scaled to 1")
            left = c.running("web")[0]["Node"]
            after = [host_curl(c, "m1", url) for _ in range(10)]
            assert after == [f"node {left}"] * 10, after
            relayed_after = [host_curl(c, "m1", relayed) for _ in range(10)]
            assert relayed_after == [f"node {left}"] * 10, (relayed_after, ingress.output())
        finally:
            c.lab.stop(ingress)
    finally:
        c.rm_service("web")
        c.rm_network(net)
        # w2 goes back to its agent without a web server
        c.kill("w2")
        c.start("w2", "run")


def _exited(pid: int) -> bool:
    """Whether `pid` has exited (a zombie has closed its files, and so its sockets)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
