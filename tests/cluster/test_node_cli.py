"""`meshkit node`: flags, and real agent processes on 127.0.0.0/8 addresses.

Each agent is a separate `python -m meshkit node init|join|run` process with its own data
dir, socket (--host) and loopback address; the CLI talks to them as a user would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.cluster.rpc import local as mkclient
from meshkit.cluster.rpc.pki import client_ssl_context
from meshkit.cluster.rpc.transport import RpcClient, RpcError
from support.agents import Agent, Cluster, meshkit, token
from support.polling import until


def by_name(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n["Hostname"]: n for n in nodes}


def leader_of(a: Agent) -> str | None:
    for n in a.ls():
        if n["ManagerStatus"] == "Leader":
            return str(n["Hostname"])
    return None


# -- flags, without an agent ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["init", "--default-addr-pool", "198.18.0.0/33"], "--default-addr-pool"),
        (["init", "--default-addr-pool-mask-length", "8"], "--default-addr-pool-mask-length"),
        (["init", "--data-path-port", "80"], "--data-path-port"),
        (["init", "--advertise-addr", "not-an-ip"], "--advertise-addr"),
        (["init", "--listen-addr", "198.51.100.1:99999"], "--listen-addr"),
        (["init", "--dispatcher-heartbeat", "soon"], "--dispatcher-heartbeat"),
        (["ls", "--format", "yaml"], "--format"),
        (["update", "--availability", "off", "x"], "--availability"),
        (["update", "--label-add", "=v", "x"], "--label-add"),
        (["join-token", "boss"], "ROLE"),
        (["inspect", "--format", "table", "x"], "--format"),
    ],
)
def test_flag_errors_name_the_flag(args: list[str], flag: str) -> None:
    r = (
        meshkit("node", *args, "--data-dir", "/nonexistent/x")
        if args[0] == "init"
        else meshkit("node", *args)
    )
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    r = meshkit("node", "ls", host=sock)
    assert r.returncode == 1
    assert f"cannot reach the agent at {sock}" in r.stderr
    r = meshkit("node", "ls", host="tcp://198.51.100.1:2375")
    assert r.returncode == 2 and "--host" in r.stderr


def test_meshkit_host_env_picks_the_socket(tmp_path: Path) -> None:
    sock = str(tmp_path / "env.sock")
    r = subprocess.run(
        [sys.executable, "-m", "meshkit", "node", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MESHKIT_HOST": f"unix://{sock}"},
    )
    assert r.returncode == 1 and f"cannot reach the agent at {sock}" in r.stderr
    assert mkclient.socket_path(None).endswith(".sock")


def test_default_pool_is_not_private() -> None:
    from meshkit.cli.node import DEFAULT_POOL

    assert DEFAULT_POOL.startswith("198.1")
    assert "RFC 2544" in " ".join(meshkit("node", "init", "--help").stdout.split())


# -- one node ----------------------------------------------------------------------------------


def test_single_manager_guards_and_leave_force() -> None:
    c = Cluster()
    try:
        m = c.init("solo", 1)
        me = m.ls()[0]
        assert me["Self"] and me["ManagerStatus"] == "Leader" and me["Status"] == "Ready"
        r = m.node("demote", "solo")
        assert r.returncode == 1 and "last manager" in r.stderr
        r = m.node("leave")
        assert r.returncode == 1 and "Use `--force`" in r.stderr
        r = m.node("rm", "solo")
        assert r.returncode == 1 and "demote it first" in r.stderr
        r = m.node("inspect", "nope")
        assert r.returncode == 1 and "node nope not found" in r.stderr
        # init again on the same data dir is refused
        r = meshkit("node", "init", "--data-dir", str(m.data), "--advertise-addr", m.ip)
        assert r.returncode == 1 and "already part of a cluster" in r.stderr
        assert m.ok("leave", "--force").strip() == "Node left the swarm."
        assert m.proc is not None
        assert m.proc.wait(15) == 0
        assert not (m.data / "node.json").exists() and not (m.data / "certs").exists()
        assert not Path(m.sock).exists()
    finally:
        c.close()


def test_detach_pid_and_log_file_and_restart_same_node() -> None:
    c = Cluster()
    try:
        a = c.agent("bg", 9)
        r = meshkit(
            "node", "init", "--detach", "--advertise-addr", a.ip, "--listen-addr",
            f"{a.ip}:2377", "--data-dir", str(a.data), "--hostname", "bg",
            host=a.sock,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "Swarm initialized: current node (" in r.stdout
        assert "meshkit node join --token MKTKN-1-" in r.stdout and f" {a.ip}:2377\n" in r.stdout
        assert "meshkit node join-token manager" in r.stdout
        pid = int((a.data / "agent.pid").read_text())
        assert (a.data / "agent.log").exists()
        node_id = a.info()["node_id"]
        a.ok("update", "--label-add", "zone=one", "bg")
        os.kill(pid, signal.SIGTERM)
        until(lambda: not (a.data / "agent.pid").exists(), 15, "agent gone")
        # Started again from its data dir: the same node, the same state.
        r = meshkit("node", "run", "--detach", "--data-dir", str(a.data), host=a.sock)
        assert r.returncode == 0, r.stderr
        pid = int((a.data / "agent.pid").read_text())
        try:
            a.wait_up()
            assert a.info()["node_id"] == node_id
            until(lambda: a.ls()[0]["Labels"] == {"zone": "one"}, 15, "state replayed")
        finally:
            os.kill(pid, signal.SIGTERM)
            until(lambda: not (a.data / "agent.pid").exists(), 15, "agent gone")
    finally:
        c.close()


def test_certificates_renew_before_expiry() -> None:
    c = Cluster()
    try:
        m = c.init("m1", 1, "--cert-expiry", "8s")
        w = c.join("w1", 2, token(m, "worker"), m)
        first_m, first_w = m.info()["cert_not_after"], w.info()["cert_not_after"]
        # Renewal at 50-80 % of 8 s: within ~7 s both have newer certificates.
        until(lambda: m.info()["cert_not_after"] > first_m, 20, "manager renewal")
        until(lambda: w.info()["cert_not_after"] > first_w, 20, "worker renewal")
        assert w.identity.role == "worker"
        until(lambda: by_name(m.ls())["w1"]["Status"] == "Ready", 10, "worker ready")
        m.ok("ls")
    finally:
        c.close()


# -- three managers and two workers -----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        mt, wt = token(m1, "manager"), token(m1, "worker")
        c.join("m2", 2, mt, m1)
        c.join("m3", 3, mt, c.agents["m2"])  # any manager takes joins
        c.join("w1", 4, wt, m1)
        c.join("w2", 5, wt, c.agents["m3"])
        yield c
    finally:
        c.close()


def _managers(c: Cluster) -> list[Agent]:
    return [c.agents[n] for n in ("m1", "m2", "m3")]


def test_ls_everywhere(cluster: Cluster) -> None:
    for m in _managers(cluster):
        out = m.ok("ls")
        lines = out.splitlines()
        assert lines[0].split() == [
            "ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE", "VERSION",
            "OVERLAY",
        ]  # fmt: skip
        assert len(lines) == 6
        mine = [ln for ln in lines if " * " in ln]
        assert len(mine) == 1 and f" {m.name} " in mine[0]
        nodes = by_name(m.ls())
        assert sorted(nodes) == ["m1", "m2", "m3", "w1", "w2"]
        statuses = sorted(nodes[n]["ManagerStatus"] for n in ("m1", "m2", "m3"))
        assert statuses == ["Leader", "Reachable", "Reachable"]
        assert nodes["w1"]["ManagerStatus"] == "" and nodes["w1"]["Status"] == "Ready"
    for w in (cluster.agents["w1"], cluster.agents["w2"]):
        r = w.node("ls")
        assert r.returncode == 1
        assert "This node is not a swarm manager." in r.stderr
        assert w.identity.role == "worker"
    assert [m.identity.role for m in _managers(cluster)] == ["manager"] * 3


def test_inspect_json(cluster: Cluster) -> None:
    m2 = cluster.agents["m2"]
    out = json.loads(m2.ok("inspect", "self", "w1"))
    assert [o["Hostname"] for o in out] == ["m2", "w1"]
    assert out[0]["Self"] and out[0]["Role"] == "manager" and out[1]["Role"] == "worker"
    assert out[1]["Addr"] == cluster.agents["w1"].ip


def test_drain_pause_and_labels(cluster: Cluster) -> None:
    m3 = cluster.agents["m3"]
    assert m3.ok("update", "--availability", "drain", "--label-add", "zone=b", "w2").strip() == "w2"
    nodes = by_name(cluster.agents["m1"].ls())
    assert nodes["w2"]["Availability"] == "Drain" and nodes["w2"]["Labels"] == {"zone": "b"}
    m3.ok("update", "--availability", "active", "--label-rm", "zone", "w2")
    until(lambda: by_name(cluster.agents["m2"].ls())["w2"]["Availability"] == "Active", 10, "x")
    r = m3.node("update", "--label-rm", "nothere", "w2")
    assert r.returncode == 1 and "key nothere doesn't exist" in r.stderr


def test_promote_and_demote(cluster: Cluster) -> None:
    m1, w1 = cluster.agents["m1"], cluster.agents["w1"]
    assert "promoted to a manager" in m1.ok("promote", "w1")
    until(lambda: by_name(m1.ls())["w1"]["ManagerStatus"] == "Reachable", 30, "w1 reachable")
    until(lambda: w1.identity.role == "manager", 10, "manager certificate")
    assert len(w1.ls()) == 5  # it now answers manager calls itself
    assert "demoted in the swarm" in w1.ok("demote", "w1")
    until(lambda: by_name(m1.ls())["w1"]["ManagerStatus"] == "", 30, "w1 worker again")
    until(lambda: w1.identity.role == "worker", 30, "worker certificate")
    until(lambda: w1.node("ls").returncode == 1, 10, "w1 refuses manager calls")
    until(lambda: not (w1.data / "raft").exists(), 10, "raft state removed")


def test_demote_the_leader_and_promote_it_back(cluster: Cluster) -> None:
    old = until(lambda: leader_of(cluster.agents["m1"]), 30, "a leader")
    a = cluster.agents[old]
    other = next(m for m in _managers(cluster) if m is not a)
    assert "demoted in the swarm" in other.ok("demote", old)
    until(lambda: leader_of(other) not in (None, old), 30, "another leader")
    until(lambda: by_name(other.ls())[old]["ManagerStatus"] == "", 30, "old leader a worker")
    until(lambda: a.identity.role == "worker", 30, "worker certificate")
    assert "promoted to a manager" in other.ok("promote", old)
    until(lambda: by_name(other.ls())[old]["ManagerStatus"] == "Reachable", 30, "manager again")
    until(lambda: a.identity.role == "manager", 30, "manager certificate")
    until(lambda: a.node("ls").returncode == 0, 30, "answers as a manager")
    until(lambda: len(a.ls()) == 5 and leader_of(a), 30, "caught up")


def test_rotated_token_refused_and_nothing_written(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    old = token(m1, "worker")
    out = m1.ok("join-token", "--rotate", "worker")
    assert out.startswith("Successfully rotated worker join token.")
    new = token(cluster.agents["m2"], "worker")
    assert new != old and new.rsplit("-", 1)[0] == old.rsplit("-", 1)[0]
    before = len(m1.ls())
    spare = cluster.agent("late", 20)
    r = meshkit(
        "node", "join", "--token", old, f"{m1.ip}:2377", "--data-dir", str(spare.data),
        "--advertise-addr", spare.ip, "--listen-addr", f"{spare.ip}:2377", host=spare.sock,
    )  # fmt: skip
    assert r.returncode == 1
    assert "invalid join token: it is not a current token of this cluster" in r.stderr
    assert len(m1.ls()) == before
    assert not (spare.data / "node.json").exists()


def test_wrong_ca_digest_refused(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    good = token(m1, "worker")
    prefix, digest, secret = good.rsplit("-", 2)
    forged = f"{prefix}-{'0' * len(digest)}-{secret}"
    spare = cluster.agent("forged", 21)
    r = meshkit(
        "node", "join", "--token", forged, f"{m1.ip}:2377", "--data-dir", str(spare.data),
        host=spare.sock,
    )  # fmt: skip
    assert r.returncode == 1
    assert "the manager's CA does not match the token: possible man-in-the-middle" in r.stderr
    assert not (spare.data / "node.json").exists()


def test_worker_certificate_refused_on_manager_calls(cluster: Cluster) -> None:
    m1, w2 = cluster.agents["m1"], cluster.agents["w2"]
    ident = w2.identity
    m1_id = m1.info()["node_id"]

    async def calls() -> None:
        ctx = client_ssl_context(ident, ident.ca_pem)
        client = await RpcClient.connect_tcp(m1.ip, 2377, ctx, 5.0, expect_role="manager")
        try:
            with pytest.raises(RpcError) as err:
                await client.call("node_ls", {})
            assert err.value.code == "forbidden"
            assert "managers only" in err.value.message
            with pytest.raises(RpcError) as err:
                await client.call("heartbeat", {"node_id": m1_id})
            assert err.value.code == "forbidden"  # cannot beat for another node
            reply = await client.call("heartbeat", {"node_id": ident.node_id})
            assert reply["role"] == "worker"
        finally:
            await client.close()
        anon = await RpcClient.connect_tcp(m1.ip, 2377, client_ssl_context(None, None), 5.0)
        try:
            with pytest.raises(RpcError) as err:
                await anon.call("node_ls", {})
            assert err.value.code == "unauthenticated"
            assert "BEGIN CERTIFICATE" in (await anon.call("ca_bundle", {}))["bundle"]
        finally:
            await anon.close()

    asyncio.run(calls())


def test_garbage_and_plain_http_on_2377(cluster: Cluster) -> None:
    m2 = cluster.agents["m2"]
    for payload in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 8,
        b"\x00\x00\x00\x05{}{}{",
    ):
        with socket.create_connection((m2.ip, 2377), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
    assert len(m2.ls()) >= 5
    assert m2.info()["raft"]["has_quorum"]


def test_worker_down_after_missed_beats_and_ready_again(cluster: Cluster) -> None:
    m1, w2 = cluster.agents["m1"], cluster.agents["w2"]
    w2.send(signal.SIGSTOP)
    try:
        until(lambda: by_name(m1.ls())["w2"]["Status"] == "Down", 20, "w2 down")
        r = m1.node("rm", "w1")
        assert r.returncode == 1 and "is not down and can't be removed" in r.stderr
    finally:
        w2.send(signal.SIGCONT)
    until(lambda: by_name(m1.ls())["w2"]["Status"] == "Ready", 20, "w2 ready")


def test_leader_killed_new_leader_nothing_lost(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    old = leader_of(m1)
    assert old is not None
    leader = cluster.agents[old]
    others = [m for m in _managers(cluster) if m is not leader]
    others[0].ok("update", "--label-add", "committed=yes", "w1")
    leader.stop(signal.SIGKILL)
    new = until(
        lambda: leader_of(others[0]) not in (None, old) and leader_of(others[0]), 30, "new leader"
    )
    assert new in {m.name for m in others}
    for m in others:
        until(lambda m=m: by_name(m.ls())["w1"]["Labels"].get("committed") == "yes", 10, "kept")
    others[1].ok("update", "--label-add", "after=kill", "w1")
    until(lambda: by_name(others[0].ls())[old]["ManagerStatus"] == "Unreachable", 10, "unreach")
    # The killed manager comes back from its data dir as the same node, with everything.
    cluster.restart(leader)
    until(lambda: by_name(leader.ls())["w1"]["Labels"].get("after") == "kill", 30, "caught up")
    until(lambda: by_name(others[0].ls())[old]["ManagerStatus"] == "Reachable", 30, "back")
    assert len(leader.ls()) == len(others[0].ls())


def test_quorum_lost_and_regained(cluster: Cluster) -> None:
    managers = _managers(cluster)
    keep, gone = managers[0], managers[1:]
    for m in gone:
        m.stop(signal.SIGKILL)
    until(lambda: not keep.info()["raft"]["has_quorum"], 20, "quorum lost")
    r = keep.node("update", "--availability", "pause", "w1")
    assert r.returncode == 1
    assert "no quorum: 1 of 3 managers reachable" in r.stderr
    assert len(keep.ls()) >= 5  # reads still answer
    for m in gone:
        cluster.restart(m)
    until(
        lambda: keep.node("update", "--availability", "active", "w1").returncode == 0,
        30,
        "writes again",
    )
    until(lambda: all(leader_of(m) for m in managers), 30, "a leader everywhere")


def test_worker_leave_then_rm(cluster: Cluster) -> None:
    m1, w2 = cluster.agents["m1"], cluster.agents["w2"]
    node_id = w2.info()["node_id"]
    assert w2.ok("leave").strip() == "Node left the swarm."
    assert w2.proc is not None and w2.proc.wait(15) == 0
    assert not (w2.data / "certs").exists() and not (w2.data / "node.json").exists()
    until(lambda: by_name(m1.ls())["w2"]["Status"] == "Down", 10, "w2 down at once")
    assert m1.ok("rm", node_id).strip() == node_id
    until(lambda: "w2" not in by_name(cluster.agents["m2"].ls()), 10, "w2 gone")


def test_manager_leave(cluster: Cluster) -> None:
    m1, m3 = cluster.agents["m1"], cluster.agents["m3"]
    until(lambda: leader_of(m1), 30, "a leader")
    assert m3.ok("leave").strip() == "Node left the swarm."
    assert m3.proc is not None and m3.proc.wait(20) == 0
    assert not (m3.data / "raft").exists() and not (m3.data / "node.json").exists()
    until(lambda: "m3" not in by_name(m1.ls()), 10, "m3 gone")
    until(lambda: len(m1.info()["raft"]["members"]) == 2, 20, "two raft members")
    m1.ok("update", "--label-add", "two=managers", "w1")
    assert by_name(cluster.agents["m2"].ls())["w1"]["Labels"]["two"] == "managers"
