"""Cluster settings, events, autolock and the node views, with real agents on 127.0.0.0/8: one
manager made with --autolock and one worker.

- `cluster inspect/update`: the settings are replicated and honoured (the worker takes the new
  heartbeat period; a crash-looping task's history is cut to the limit).
- `events`: node, service and task events from the state changes, filtered, as JSON.
- autolock: the raft secret and the data key are on disk only encrypted; the unlock key reaches
  no file; a restarted manager waits locked (its log and its socket say so) until `node unlock`
  with the right key; `unlock-key --rotate` re-encrypts; `--autolock=false` puts them back.
- `node ps`, `node ls --filter`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.cluster.raft import autolock
from meshkit.cluster.rpc.transport import RpcError
from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tasks need root")


def run(a: Agent, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], input=stdin, capture_output=True, text=True,
        timeout=60, env={**os.environ, **ENV, "MESHKIT_HOST": a.sock},
    )  # fmt: skip


def mk(a: Agent, *args: str, stdin: str | None = None) -> str:
    r = run(a, *args, stdin=stdin)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def events(a: Agent, *filters: str) -> list[dict[str, Any]]:
    out = mk(a, "events", "--since", "0", "--until", "+0s", "--format", "json", *filters)
    return [json.loads(line) for line in out.splitlines()]


def files_holding(root: Any, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        m1 = c.init("m1", 1, "--autolock", "--task-history-limit", "4")
        c.join("w1", 2, token(m1, "worker"), m1)
        until(lambda: len([n for n in m1.ls() if n["Status"] == "Ready"]) == 2, 30, "2 nodes")
        yield c
    finally:
        c.close()


def test_settings_replicated_and_honoured(cluster: Cluster) -> None:
    m1, w1 = cluster.agents["m1"], cluster.agents["w1"]
    view = json.loads(mk(m1, "cluster", "inspect"))[0]
    assert view["Spec"]["EncryptionConfig"]["AutoLockManagers"] is True
    assert view["Spec"]["Overlay"]["EncryptionKeyRotation"] == 43200.0
    assert view["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 4  # from init
    r = run(m1, "cluster", "update", "--task-history-limit", "-1")
    assert r.returncode == 2 and "--task-history-limit" in r.stderr
    mk(m1, "cluster", "update", "--dispatcher-heartbeat", "2s", "--task-history-limit", "2",
       "--encryption-key-rotation", "6h", "--cert-expiry", "720h")  # fmt: skip
    pretty = mk(m1, "cluster", "inspect", "--pretty")
    assert " Task History Retention Limit: 2" in pretty and " Heartbeat Period: 2s" in pretty
    assert " Key Rotation: 6h0m0s" in pretty and " Expiry Duration: 720h0m0s" in pretty
    # the worker takes the heartbeat period from its manager
    until(lambda: json.loads((w1.data / "node.json").read_text())["heartbeat_period"] == 2.0,
          15, "new period")  # fmt: skip
    # a crash-looping task keeps only 2 tasks in its slot
    mk(m1, "service", "create", "--detach", "--name", "crash", "--restart-delay", "100ms",
       "--constraint", "node.role==worker", "--", "sh", "-c", "exit 3")  # fmt: skip
    until(lambda: len(events(m1, "--filter", "type=task")) >= 20, 40, "several restarts")
    tasks = json.loads(mk(m1, "service", "ps", "crash", "--format", "json"))
    assert len(tasks) <= 2, tasks
    mk(m1, "service", "rm", "crash")


def test_events(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    nodes = events(m1, "--filter", "type=node")
    assert {"node"} == {e["Type"] for e in nodes}
    assert any(e["Action"] == "create" and e["Actor"]["Attributes"]["name"] == "w1" for e in nodes)
    mk(m1, "service", "create", "--detach", "--name", "ev", "--", "sleep", "300")
    services = until(
        lambda: [
            e
            for e in events(m1, "--filter", "type=service")
            if e["Actor"]["Attributes"].get("name") == "ev"
        ],
        10,
        "service event",
    )
    assert services[0]["Action"] == "create" and services[0]["scope"] == "swarm"
    assert services[0]["timeNano"] // 10**9 == services[0]["time"]
    text = mk(m1, "events", "--since", "0", "--until", "+0s", "--filter", "type=service")
    assert f"service create {services[0]['Actor']['ID']} (name=ev)" in text
    # follows: a change made after it started shows up
    follower = subprocess.Popen(
        [sys.executable, "-m", "meshkit", "events", "--format", "json", "--filter", "type=service"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **ENV, "MESHKIT_HOST": m1.sock},
    )  # fmt: skip
    try:
        until(lambda: "ev" in mk(m1, "service", "ls"), 5, "ls")
        import time

        time.sleep(1.0)
        mk(m1, "service", "rm", "ev")
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 20)
        assert ready, "no event followed within 20 s"
        ev = json.loads(follower.stdout.readline())
        assert (ev["Action"], ev["Actor"]["Attributes"]["name"]) == ("remove", "ev")
    finally:
        follower.kill()
        follower.wait()
    r = run(m1, "events", "--filter", "type=volume")
    assert r.returncode == 2 and "--filter" in r.stderr


def test_node_ps_and_filters(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    mk(m1, "service", "create", "--detach", "--name", "on-w1", "--constraint",
       "node.role==worker", "--", "sleep", "300")  # fmt: skip
    until(lambda: "on-w1.1" in mk(m1, "node", "ps", "w1"), 20, "task on w1")
    assert "on-w1" not in mk(m1, "node", "ps")  # self: the manager runs none of it
    tasks = json.loads(mk(m1, "node", "ps", "w1", "--format", "json"))
    assert {t["Node"] for t in tasks} == {"w1"}
    workers = mk(m1, "node", "ls", "--filter", "role=worker", "--format", "json")
    assert [n["Hostname"] for n in json.loads(workers)] == ["w1"]
    mk(m1, "node", "update", "--label-add", "zone=a", "w1")
    w1_id = next(n["ID"] for n in m1.ls() if n["Hostname"] == "w1")
    assert mk(m1, "node", "ls", "-q", "--filter", "node.label=zone=a").split() == [w1_id]
    assert mk(m1, "node", "ls", "-q", "--filter", "node.label=zone").split() == [w1_id]
    assert mk(m1, "node", "ls", "-q", "--filter", "node.label=zone=b").split() == []
    mk(m1, "service", "rm", "on-w1")


def test_autolock_locks_keys_and_waits_for_unlock(cluster: Cluster) -> None:
    m1 = cluster.agents["m1"]
    raft = m1.data / "raft"
    key = mk(m1, "cluster", "unlock-key", "-q").strip()
    assert key.startswith("MKKEY-1-") and key in m1.log.read_text()  # printed once, by init
    assert not (raft / "secret").exists() and not (raft / "datakey").exists()
    assert (raft / "secret.locked").exists() and (raft / "datakey.locked").exists()
    certs = m1.data / "certs"
    assert (certs / "node.key.locked").exists() and not (certs / "node.key").exists()
    assert files_holding(m1.data, key.encode()) == []
    m1.stop()
    m1.start("run", "--data-dir", str(m1.data), "--host", m1.sock)

    def locked() -> bool:
        try:
            return bool(m1.info().get("locked"))
        except RpcError:
            return False  # not listening yet

    until(locked, 20, "waiting locked")
    r = m1.node("ls")
    assert r.returncode == 1 and "locked" in r.stderr and "meshkit node unlock" in r.stderr
    assert "This manager is locked" in m1.log.read_text()
    assert "is running as a manager, locked: unlock it with" in m1.log.read_text()  # stdout
    r = run(m1, "node", "unlock", stdin="MKKEY-1-" + "A" * 43 + "\n")
    assert r.returncode == 1 and "invalid unlock key" in r.stderr
    mk(m1, "node", "unlock", stdin=key + "\n")
    m1.wait_up()
    until(lambda: all(n["Status"] == "Ready" for n in m1.ls()), 20, "nodes back")
    # rotation re-encrypts the keys at rest
    new = mk(m1, "cluster", "unlock-key", "--rotate", "-q").strip()
    assert new != key

    def opens_with(k: str) -> bool:
        try:
            autolock.read_file(raft / "secret", k)
            return True
        except autolock.LockError:
            return False

    until(lambda: opens_with(new), 10, "re-encrypted")
    assert not opens_with(key)
    mk(m1, "cluster", "update", "--autolock=false")
    until(lambda: (raft / "secret").exists() and not (raft / "secret.locked").exists(), 10, "clear")
    assert (certs / "node.key").exists() and not (certs / "node.key.locked").exists()
    r = run(m1, "cluster", "unlock-key")
    assert r.returncode == 1 and "autolock is off" in r.stderr
