"""The namespace harness itself: hosts reach each other, and nothing is left behind."""

from __future__ import annotations

import ipaddress
import sys
import textwrap

import pytest

from support import netns
from support.netns import NetnsError, NetnsLab

pytestmark = pytest.mark.root

SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen()
    print("listening", flush=True)
    while True:
        c, addr = s.accept()
        c.sendall(("hello " + addr[0] + "\\n").encode())
        c.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    deadline = time.monotonic() + 20
    while True:
        try:
            c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"connect: {exc}")
            time.sleep(0.1)
    print(c.recv(100).decode().strip())
    """
)


def _lab_leftovers(prefix: str) -> list[str]:
    return [name for name in netns.namespaces() if name.startswith(prefix + "-")]


def test_hosts_reach_each_other_over_the_bridge(netns_lab: NetnsLab) -> None:
    a, b, c = netns_lab.add_hosts(3)
    for host in (a, b, c):
        assert ipaddress.ip_address(host.address) in netns.LAB_NETWORK
    assert len({a.address, b.address, c.address}) == 3
    server = netns_lab.spawn(a.name, [sys.executable, "-c", SERVER, a.address, "7000"])
    for client in (b, c):
        out = netns_lab.run(client.name, [sys.executable, "-c", CLIENT, a.address, "7000"])
        assert out.stdout.strip() == f"hello {client.address}", server.output()
    # each host has its own loopback and sees only lo and eth0
    links = netns_lab.run(b.name, ["ip", "-o", "link", "show"]).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == ["eth0", "lo"]
    assert server.pid in netns_lab.pids(a.name)


def test_disconnect_partitions_a_host(netns_lab: NetnsLab) -> None:
    a, b = netns_lab.add_hosts(2)
    netns_lab.spawn(a.name, [sys.executable, "-c", SERVER, a.address, "7001"])
    netns_lab.run(b.name, [sys.executable, "-c", CLIENT, a.address, "7001"])
    netns_lab.disconnect(b.name)
    probe = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 7001), timeout=1)\n"
    probe += "except OSError:\n sys.exit(3)\n"
    assert (
        netns_lab.run(b.name, [sys.executable, "-c", probe, a.address], check=False).returncode == 3
    )
    netns_lab.reconnect(b.name)
    netns_lab.run(b.name, [sys.executable, "-c", CLIENT, a.address, "7001"])


def test_teardown_removes_everything_even_after_a_failure() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    lab = NetnsLab()
    procs = []
    with pytest.raises(RuntimeError, match="test body failed"), lab:
        lab.add_hosts(2)
        procs.append(lab.spawn("h0", ["sleep", "300"]))
        # a grandchild the lab did not start itself, still inside the namespace
        lab.spawn("h1", ["sh", "-c", "sleep 300 & wait"])
        assert len(_lab_leftovers(lab.prefix)) == 3  # hub + 2 hosts
        raise RuntimeError("test body failed")
    assert _lab_leftovers(lab.prefix) == []
    assert all(p.popen.poll() is not None for p in lab.processes)
    lab.close()  # idempotent


def test_errors_are_clear(netns_lab: NetnsLab) -> None:
    netns_lab.add_host("only")
    with pytest.raises(NetnsError, match="duplicate"):
        netns_lab.add_host("only")
    with pytest.raises(NetnsError, match="no host 'ghost'"):
        netns_lab.run("ghost", ["true"])
    with pytest.raises(NetnsError, match="exited 1"):
        netns_lab.run("only", ["false"])
    with pytest.raises(NetnsError, match=r"not inside 198\.18\.0\.0/15"):
        NetnsLab(subnet="203.0.113.0/24")
