"""`meshkit cluster ca --rotate` with real agents on 127.0.0.0/8: a manager (autolock on) and
a worker running a task. After the rotation both node certificates chain to the new root (and
trust only it), the task was not restarted (same id, same pid), the manager restarted locked
opens the new root's key once unlocked, the old worker token is refused saying a CA rotation
may be why while the new one joins a node, and the nodes still talk (node ls shows them Ready,
a new service reaches the worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.cluster.raft import autolock
from meshkit.cluster.rpc import pki
from meshkit.cluster.rpc.transport import RpcError
from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tasks run as root in these tests")


def run(a: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=90,
        env={**os.environ, **ENV, "MESHKIT_HOST": a.sock},
    )  # fmt: skip


def mk(a: Agent, *args: str) -> str:
    r = run(a, *args)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def running(a: Agent, service: str) -> list[dict[str, Any]]:
    tasks = json.loads(mk(a, "service", "ps", service, "--format", "json"))
    return [t for t in tasks if t["State"] == "running" and t["DesiredState"] == "running"]


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    pids: list[int] = []
    try:
        m1 = c.init("m1", 1, "--autolock")  # the new root's key is kept like the first's
        c.join("w1", 2, token(m1, "worker"), m1)
        until(lambda: len([n for n in m1.ls() if n["Status"] == "Ready"]) == 2, 30, "2 nodes")
        c.pids = pids  # type: ignore[attr-defined]
        yield c
    finally:
        m1 = c.agents.get("m1")
        if m1 is not None and m1.proc is not None and m1.proc.poll() is None:
            names = [s["Name"] for s in json.loads(mk(m1, "service", "ls", "--format", "json"))]
            if names:
                run(m1, "service", "rm", *names)
                until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 30, "ended")
        c.close()


def mkclient_locked(a: Agent) -> bool:
    try:
        return bool(a.info().get("locked"))
    except RpcError:
        return False  # not listening yet


def roots(pem: bytes) -> list[str]:
    return [pki.key_id(c.public_bytes(pki.serialization.Encoding.PEM)) for c in
            pki.certs_in(pem, "bundle")]  # fmt: skip


def test_rotation_recertifies_every_node_without_restarting_a_task(cluster: Cluster) -> None:
    m1, w1 = cluster.agents["m1"], cluster.agents["w1"]
    old_root = mk(m1, "cluster", "ca").strip() + "\n"
    assert old_root.startswith("-----BEGIN CERTIFICATE-----")
    old_token = token(m1, "worker")
    mk(m1, "service", "create", "--detach", "--name", "keep", "--constraint",
       "node.hostname==w1", "--", "sleep", "600")  # fmt: skip
    until(lambda: running(m1, "keep"), 30, "the task runs on w1")
    (before,) = running(m1, "keep")
    cluster.pids.append(before["Pid"])  # type: ignore[attr-defined]

    out = mk(m1, "cluster", "ca", "--rotate")
    assert "rotated CA certificates: [2/2] nodes" in out
    new_root = out[out.index("-----BEGIN CERTIFICATE-----") :].strip() + "\n"
    assert new_root != old_root
    assert mk(m1, "cluster", "ca").strip() + "\n" == new_root
    new_id = pki.key_id(new_root.encode())
    for a in (m1, w1):  # (m1's node.key is locked: read the certificate and bundle only)
        cert = (a.data / "certs" / "node.crt").read_bytes()
        assert pki.issuer_key_id(cert) == new_id, f"{a.name} not re-certified"
        bundle = (a.data / "certs" / "ca-bundle.crt").read_bytes()
        assert roots(bundle) == [new_id], f"{a.name} still trusts another root"
    (after,) = running(m1, "keep")
    assert (after["ID"], after["Pid"]) == (before["ID"], before["Pid"])
    assert os.path.exists(f"/proc/{before['Pid']}")

    # the renewed TLS key of the manager is locked at rest again
    until(lambda: autolock.node_key_locked(m1.data), 10, "m1's new key locked")
    # a restarted (locked) manager opens the new root's key once unlocked: joins below sign
    unlock_key = mk(m1, "cluster", "unlock-key", "-q").strip()
    m1.stop()
    m1.start("run", "--data-dir", str(m1.data), "--host", m1.sock)
    until(lambda: mkclient_locked(m1), 20, "m1 waits locked")
    r = subprocess.run(
        [sys.executable, "-m", "meshkit", "node", "unlock", "--host", m1.sock],
        input=unlock_key + "\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, **ENV},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m1.wait_up()
    assert mk(m1, "cluster", "ca").strip() + "\n" == new_root

    # the old worker token: refused, saying why; the new one works
    new_token = token(m1, "worker")
    assert new_token != old_token
    w2 = cluster.agent("w2", 3)
    w2.start(
        "join", "--token", old_token, f"{m1.ip}:2377", "--advertise-addr", w2.ip,
        "--listen-addr", f"{w2.ip}:2377", "--data-dir", str(w2.data), "--host", w2.sock,
    )  # fmt: skip
    assert w2.proc is not None
    w2.proc.wait(60)
    assert w2.proc.returncode != 0
    assert "or a token from before a CA rotation" in w2.log.read_text()
    cluster.agents.pop("w2")
    w3 = cluster.join("w3", 4, new_token, m1)
    assert pki.issuer_key_id(w3.identity.cert_pem) == new_id

    # RPC between the nodes still works
    until(
        lambda: (
            {n["Hostname"]: n["Status"] for n in m1.ls()}
            == {"m1": "Ready", "w1": "Ready", "w3": "Ready"}
        ),
        30,
        "every node Ready",
    )
    mk(m1, "service", "create", "--detach", "--name", "probe", "--constraint",
       "node.hostname==w1", "--", "sleep", "600")  # fmt: skip
    until(lambda: running(m1, "probe"), 30, "a new task reaches w1")
    cluster.pids.append(running(m1, "probe")[0]["Pid"])  # type: ignore[attr-defined]
