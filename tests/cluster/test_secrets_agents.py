"""Secrets and configs end to end, with real agents on 127.0.0.0/8: a task reads its secret at
/run/secrets/TARGET (owner and mode as asked) and its config at its target; the secret's bytes
are on no disk under the test's folders (data dirs, raft journals, logs); a node without such a
task never gets it; `secret inspect` has no value; `secret rm` of a used secret is refused
naming the service; rotation (`--secret-rm old --secret-add src=new,target=same`) replaces
the file through a rolling update."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.agents import ENV, Agent, Cluster, token
from support.polling import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tasks' mount namespaces need root")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        tok = token(m1, "worker")
        c.join("w1", 2, tok, m1)
        c.join("w2", 3, tok, m1)
        until(lambda: len([n for n in m1.ls() if n["Status"] == "Ready"]) == 3, 30, "3 nodes")
        yield c
    finally:
        c.close()


def run(a: Agent, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """meshkit against `a`'s agent (MESHKIT_HOST: `--host` would land after `--`)."""
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, **ENV, "MESHKIT_HOST": a.sock},
    )  # fmt: skip


def mk(a: Agent, *args: str, stdin: str | None = None) -> str:
    r = run(a, *args, stdin=stdin)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def fails(a: Agent, *args: str) -> str:
    r = run(a, *args)
    assert r.returncode != 0, f"{args} should fail: {r.stdout}"
    return r.stderr


def files_holding(root: Path, needle: bytes) -> list[str]:
    out = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                out.append(str(path))
        except OSError:
            continue
    return out


def running_tasks(a: Agent, service: str) -> list[dict[str, Any]]:
    tasks = json.loads(mk(a, "service", "ps", service, "--format", "json"))
    return [t for t in tasks if t["State"] == "running" and t["DesiredState"] == "running"]


def test_secret_reaches_only_its_task_and_no_disk(cluster: Cluster) -> None:
    m1, w1, w2 = (cluster.agents[n] for n in ("m1", "w1", "w2"))
    host_run_secrets = os.path.exists("/run/secrets")
    value = "topsecret-" + secrets.token_hex(8)
    value2 = "rotated-" + secrets.token_hex(8)
    sid = mk(m1, "secret", "create", "--label", "env=test", "db", "-", stdin=value).strip()
    assert len(sid) == 25
    mk(m1, "secret", "create", "db2", "-", stdin=value2)
    cfg = cluster.root / "app.conf"
    cfg.write_text("listen = 8080\n")
    mk(m1, "config", "create", "appconf", str(cfg))
    # names, duplicates and missing references: Docker's texts
    assert "invalid name" in fails(m1, "secret", "create", "bad/name", str(cfg))
    assert "secret db already exists" in fails(m1, "secret", "create", "db", str(cfg))
    # inspect and ls never show the value; a config's data shows with --pretty
    shown = mk(m1, "secret", "inspect", "db") + mk(m1, "secret", "ls", "--format", "json")
    assert value not in shown and json.loads(mk(m1, "secret", "inspect", "db"))[0]["ID"] == sid
    assert "listen = 8080" in mk(m1, "config", "inspect", "--pretty", "appconf")
    table = mk(m1, "secret", "ls").splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED", "UPDATED"]
    assert "secret not found: nope" in fails(
        m1, "service", "create", "--detach", "--name", "bad", "--secret", "nope", "--", "true"
    )
    script = (
        "tr a-z A-Z < /run/secrets/db; echo; stat -c 'mode %a uid %u gid %g' /run/secrets/db; "
        "cat /run/configs/appconf; sed s/listen/bound/ /etc/hostname; "
        "test -d /run/netns && echo host-run-visible; sleep 3600"
    )
    mk(m1, "service", "create", "--detach", "--name", "app",
       "--constraint", "node.hostname==w1",
       "--secret", "src=db,target=db,uid=1234,gid=4321,mode=0440",
       "--config", "appconf", "--config", "src=appconf,target=/etc/hostname",
       "--update-monitor", "1s", "--", "sh", "-c", script)  # fmt: skip

    def logs() -> str:
        return run(m1, "service", "logs", "app").stdout

    until(lambda: value.upper() in logs(), 30, "the task prints its secret")
    out = logs()
    assert "mode 440 uid 1234 gid 4321" in out and "listen = 8080" in out
    assert "bound = 8080" in out  # a config bound over an existing file, in the task only
    assert "listen" not in Path("/etc/hostname").read_text()
    assert "host-run-visible" in out  # the host's /run entries are still seen in the task
    (task,) = running_tasks(m1, "app")
    w1_id = w1.info()["node_id"]
    assert task["NodeID"] == w1_id
    # what each node holds: only w1, and only for that task
    assert w1.info()["secrets"] == {"db": [task["ID"]]}
    assert w2.info()["secrets"] == {} and m1.info()["secrets"] == {}
    assert "received secrets" not in w2.log.read_text()
    assert "received secrets: db" in w1.log.read_text()
    gave = [ln for ln in m1.log.read_text().splitlines() if "gave node" in ln]
    assert gave and all(w1_id in ln for ln in gave)
    # a used secret cannot go
    err = fails(m1, "secret", "rm", "db")
    assert "secret 'db' is in use by the following service: app" in err
    # the host's /run is untouched, and no disk under the test's folders holds the value
    assert os.path.exists("/run/secrets") == host_run_secrets
    assert files_holding(cluster.root, value.encode()) == []
    # rotation: a rolling update, the same target, the new value
    mk(m1, "service", "update", "--detach", "app", "--secret-rm", "db",
       "--secret-add", "src=db2,target=db,mode=0400")  # fmt: skip
    until(lambda: value2.upper() in logs(), 40, "the new task prints the new secret")

    def settled() -> bool:
        held = w1.info()["secrets"]
        return list(held) == ["db2"] and len(running_tasks(m1, "app")) == 1

    until(settled, 30, "w1 holds only the new secret")
    mk(m1, "secret", "rm", "db")  # no service uses it any more
    assert "No such secret: db" in fails(m1, "secret", "inspect", "db")
    assert files_holding(cluster.root, value2.encode()) == []
    assert w2.info()["secrets"] == {}
    mk(m1, "service", "rm", "app")
    until(lambda: w1.info()["secrets"] == {}, 30, "the secret goes with the last task")
    mk(m1, "secret", "rm", "db2")
    mk(m1, "config", "rm", "appconf")
