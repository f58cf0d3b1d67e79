"""`meshkit stack` end to end: a two-service stack of processes on three namespace hosts (web
with a published port, a secret and a config from files next to the compose file), listed,
redeployed with one change (only that service updates, the secret is reused) and removed with
everything it created, its secret and config included. The translation itself is tested
without agents in tests/cli/test_stackfile.py."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.labutil import Lab, lab_cluster
from support.polling import until

pytestmark = pytest.mark.root

STACK = """
version: "3.8"
services:
  web:
    command: ["sh", "-c", "echo $$GREETING; tr a-z A-Z < /run/secrets/db_pw; echo;
              stat -c 'mode %a uid %u' /run/secrets/db_pw; cat /run/configs/site;
              exec sleep 1000"]
    environment:
      GREETING: ${GREETING:-hello}
    ports:
      - "8093:80"
    secrets:
      - source: db_pw
        uid: "1234"
        mode: 0400
    configs: [site]
    deploy:
      replicas: ${WEB_REPLICAS}
  worker:
    entrypoint: sleep
    command: "1000"
    networks: [back]
    deploy:
      restart_policy: {condition: on-failure, delay: 1s}
networks:
  back:
    internal: true
secrets:
  db_pw: {file: ./db_pw.txt}
configs:
  site: {file: site.conf}
"""


class Cluster(Lab):
    def stack(self, *args: str) -> Any:
        return self.cli("stack", *args)

    def stack_json(self, *args: str) -> Any:
        return json.loads(self.cli_ok("stack", *args, "--format", "json"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, ("m1", "w1", "w2")) as c:
        yield c


def test_deploy_list_redeploy_and_rm(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    f = tmp_path / "app.yml"
    f.write_text(STACK)
    value = "stacksecret-" + secrets.token_hex(8)
    (tmp_path / "db_pw.txt").write_text(value)
    (tmp_path / "site.conf").write_text("listen = 8093\n")
    monkeypatch.setenv("WEB_REPLICAS", "2")  # the deploying shell's environment
    monkeypatch.delenv("GREETING", raising=False)
    out = c.cli_ok("stack", "deploy", "-c", str(f), "app")
    assert "Creating network app_default" in out and "Creating network app_back" in out
    assert "Creating service app_web" in out and "Creating service app_worker" in out
    assert "Creating secret app_db_pw" in out and "Creating config app_site" in out

    assert c.stack_json("ls") == [{"Name": "app", "Services": "2"}]
    assert "app" in c.cli_ok("stack", "ls")

    def replicas() -> dict[str, str]:
        return {s["Name"]: s["Replicas"] for s in c.stack_json("services", "app")}

    until(lambda: replicas() == {"app_web": "2/2", "app_worker": "1/1"}, 60, "stack running")
    tasks = c.stack_json("ps", "app")
    running = [t for t in tasks if t["State"] == "running"]
    assert sorted(t["Name"] for t in running) == ["app_web.1", "app_web.2", "app_worker.1"]
    table = c.cli_ok("stack", "ps", "app")
    assert "app_web.1" in table and "app_worker.1" in table and "Running" in table

    # the task reads its secret at /run/secrets/db_pw (owner and mode as asked), its config
    # at /run/configs/site; `secret inspect` shows the stack's labels, never the value
    def logs() -> str:
        return c.cli("service", "logs", "app_web").stdout

    until(lambda: value.upper() in logs(), 30, "the stack's task prints its secret")
    assert "mode 400 uid 1234" in logs() and "listen = 8093" in logs()
    shown = c.cli_ok("secret", "inspect", "app_db_pw")
    assert value not in shown
    assert json.loads(shown)[0]["Labels"]["com.docker.stack.namespace"] == "app"

    nets = {n["Name"]: n for n in json.loads(c.cli_ok("network", "ls", "--format", "json"))}
    assert nets["app_back"]["Labels"]["com.docker.stack.namespace"] == "app"
    web = json.loads(c.cli_ok("service", "inspect", "app_web"))
    web = web[0] if isinstance(web, list) else web
    assert web["spec"]["env"] == ["GREETING=hello"]
    assert web["spec"]["networks"] == ["app_default"]
    worker_before = {t["ID"] for t in c.running("app_worker")}

    # one change: web's replica count; the worker is left alone
    monkeypatch.setenv("WEB_REPLICAS", "3")
    out = c.cli_ok("stack", "deploy", "-c", str(f), "app")
    assert "Updating service app_web" in out and "Service app_worker is unchanged" in out
    assert "Creating secret" not in out  # the same file: the secret is reused
    until(lambda: replicas()["app_web"] == "3/3", 60, "web scaled in place")
    assert {t["ID"] for t in c.running("app_worker")} == worker_before
    assert len([t for t in c.tasks("app_web") if t["State"] == "running"]) == 3

    out = c.cli_ok("stack", "rm", "app")
    assert "Removing service app_web" in out and "Removing network app_back" in out
    assert "Removing secret app_db_pw" in out and "Removing config app_site" in out
    assert json.loads(c.cli_ok("secret", "ls", "--format", "json")) == []
    assert json.loads(c.cli_ok("config", "ls", "--format", "json")) == []
    assert c.stack_json("ls") == []
    names = {n["Name"] for n in json.loads(c.cli_ok("network", "ls", "--format", "json"))}
    assert not names & {"app_default", "app_back"}
    assert json.loads(c.cli_ok("service", "ls", "--format", "json")) == []
    r = c.stack("services", "app")
    assert r.returncode != 0 and "nothing found in stack: app" in r.stderr
