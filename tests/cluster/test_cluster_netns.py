"""Three managers and two workers as agent processes on five network-namespace hosts.

The hosts share one bridge (198.18.0.0/24, from tests/netns.py). Each agent runs inside its
host's namespace; its Unix socket is a file, so the CLI reaches every agent from here with
--host. Partitions are made by pulling a host's cable (its veth goes down).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from support import netns
from support.labutil import Lab
from support.polling import until

pytestmark = pytest.mark.root


@pytest.fixture
def lab(netns_lab: netns.NetnsLab) -> Any:
    for name in ("m1", "m2", "m3", "w1", "w2"):
        netns_lab.add_host(name)
    c = Lab(netns_lab)
    try:
        yield c
    finally:
        c.close()


def test_five_hosts(lab: Lab) -> None:
    ip = lab.lab.addr
    lab.start(
        "m1", "init", "--advertise-addr", ip("m1"), "--hostname", "m1",
        "--dispatcher-heartbeat", "1s",
    )  # fmt: skip
    out = lab.procs["m1"].output()
    assert "Swarm initialized: current node (" in out
    assert f" {ip('m1')}:2377\n" in out
    wt = lab.ok("m1", "join-token", "-q", "worker").strip()
    mt = lab.ok("m1", "join-token", "-q", "manager").strip()
    # Managers give their address; workers let the manager see it.
    lab.start("m2", "join", "--token", mt, f"{ip('m1')}:2377", "--advertise-addr", ip("m2"),
              "--hostname", "m2")  # fmt: skip
    lab.start("m3", "join", "--token", mt, f"{ip('m2')}:2377", "--advertise-addr", ip("m3"),
              "--hostname", "m3")  # fmt: skip
    lab.start("w1", "join", "--token", wt, ip("m1"), "--hostname", "w1")
    lab.start("w2", "join", "--token", wt, f"{ip('m3')}:2377", "--hostname", "w2")
    assert "This node joined a swarm as a worker." in lab.procs["w1"].output()

    # node ls everywhere
    for m in ("m1", "m2", "m3"):
        nodes = until(lambda m=m: len(lab.ls(m)) == 5 and lab.ls(m), 20, "five nodes")
        assert sorted(n["ManagerStatus"] for n in nodes.values() if n["Role"] == "manager") == [
            "Leader", "Reachable", "Reachable"
        ]  # fmt: skip
        assert nodes["w1"]["Addr"] == ip("w1") and nodes["w2"]["Status"] == "Ready"
        assert nodes[m]["Self"]
    for w in ("w1", "w2"):
        r = lab.node(w, "ls")
        assert r.returncode == 1 and "This node is not a swarm manager." in r.stderr

    # drain
    lab.ok("m2", "update", "--availability", "drain", "w1")
    assert lab.ls("m3")["w1"]["Availability"] == "Drain"
    lab.ok("m2", "update", "--availability", "active", "w1")

    # promote and demote
    lab.ok("m1", "promote", "w2")
    until(lambda: lab.ls("m1")["w2"]["ManagerStatus"] == "Reachable", 30, "w2 manager")
    until(lambda: lab.node("w2", "ls").returncode == 0, 20, "w2 answers as a manager")
    lab.ok("m3", "demote", "w2")
    until(lambda: lab.ls("m1")["w2"]["ManagerStatus"] == "", 30, "w2 worker")
    until(lambda: lab.node("w2", "ls").returncode == 1, 30, "w2 refuses manager calls")

    # rotate a token: the old one is refused, nothing is written
    lab.ok("m1", "join-token", "--rotate", "worker")
    spare = lab.lab.add_host("spare")
    r = lab.lab.run(
        spare.name,
        [sys.executable, "-m", "meshkit", "node", "join", "--token", wt, ip("m1"),
         "--data-dir", str(lab.data("spare")), "--host", lab.sock("spare")],
        check=False,
    )  # fmt: skip
    assert r.returncode == 1 and "it is not a current token of this cluster" in r.stderr
    # a token with another CA digest is refused before anything is sent
    prefix, digest, secret = wt.rsplit("-", 2)
    forged = f"{prefix}-{'1' * len(digest)}-{secret}"
    r = lab.lab.run(
        spare.name,
        [sys.executable, "-m", "meshkit", "node", "join", "--token", forged, ip("m1"),
         "--data-dir", str(lab.data("spare")), "--host", lab.sock("spare")],
        check=False,
    )  # fmt: skip
    assert r.returncode == 1 and "possible man-in-the-middle" in r.stderr
    assert len(lab.ls("m1")) == 5

    # a worker's certificate is refused on a manager-only call; garbage and HTTP harm nothing
    certs = lab.data("w1") / "certs"
    r = lab.python(
        "w1",
        f"""
        import asyncio, socket
        from meshkit.cluster.rpc.pki import NodeIdentity, client_ssl_context
        from meshkit.cluster.rpc.transport import RpcClient, RpcError
        ident = NodeIdentity.load({str(certs)!r})
        async def main():
            c = await RpcClient.connect_tcp({ip("m2")!r}, 2377,
                                            client_ssl_context(ident, ident.ca_pem), 5)
            try:
                await c.call("node_ls", {{}})
            except RpcError as e:
                print("refused", e.code)
            await c.close()
        asyncio.run(main())
        for payload in (b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n", bytes(range(256)) * 4):
            s = socket.create_connection(({ip("m2")!r}, 2377), timeout=5)
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
            s.close()
        print("sent")
        """,
    )
    assert "refused forbidden" in r.stdout and "sent" in r.stdout, r.stderr
    assert len(lab.ls("m2")) == 5

    # the leader's host is cut off: the other two elect a leader; nothing committed is lost
    lab.ok("m2", "update", "--label-add", "before=cut", "w1")
    old = lab.leader("m2")
    assert old is not None
    rest = [m for m in ("m1", "m2", "m3") if m != old]
    lab.lab.disconnect(old)
    new = until(lambda: lab.leader(rest[0]) not in (None, old) and lab.leader(rest[0]), 30,
                "new leader")  # fmt: skip
    assert new in rest
    assert lab.ls(rest[1])["w1"]["Labels"]["before"] == "cut"
    lab.ok(rest[1], "update", "--label-add", "during=cut", "w1")

    # the cut-off manager has no quorum: writes fail with the count, reads answer
    def refused() -> str:
        r = lab.node(old, "update", "--label-add", "x=y", "w2")
        return r.stderr if r.returncode and "no quorum" in r.stderr else ""

    assert "no quorum: 1 of 3 managers reachable" in until(refused, 30, "no quorum")
    assert len(lab.ls(old)) == 5
    lab.lab.reconnect(old)
    until(lambda: lab.ls(old)["w1"]["Labels"].get("during") == "cut", 30, "caught up")
    until(lambda: lab.ls(rest[0])[old]["ManagerStatus"] == "Reachable", 30, "reachable again")

    # a worker whose host is cut off goes Down, and Ready once it beats again
    lab.lab.disconnect("w2")
    until(lambda: lab.ls("m1")["w2"]["Status"] == "Down", 20, "w2 down")
    lab.lab.reconnect("w2")
    until(lambda: lab.ls("m1")["w2"]["Status"] == "Ready", 20, "w2 ready")

    # the leader killed: another is elected, nothing committed is lost; started again from
    # its data dir it is the same node with all the state
    victim = until(lambda: lab.leader("m1"), 30, "a leader")
    node_id = lab.ls(victim)[victim]["ID"]
    lab.ok(victim, "update", "--label-add", "by=leader", "w1")
    lab.kill(victim)
    others = [m for m in ("m1", "m2", "m3") if m != victim]
    until(lambda: lab.leader(others[0]) not in (None, victim), 30, "re-election")
    assert lab.ls(others[1])["w1"]["Labels"]["by"] == "leader"
    lab.ok(others[1], "update", "--label-add", "while=down", "w1")
    lab.start(victim, "run")
    until(lambda: lab.ls(victim)["w1"]["Labels"].get("while") == "down", 30, "replayed")
    assert lab.ls(victim)[victim]["ID"] == node_id
