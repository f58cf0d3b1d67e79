"""`meshkit stack` against a fake agent: what deploy sends (create, update only what changed,
prune), and that rm removes services before networks. With real agents:
tests/cluster/test_stack_netns.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import meshkit.cli.stack as sk
from meshkit.cli import main
from meshkit.cluster.model.services import check_spec, has_label

FILE = """
services:
  web:
    command: sleep 1000
    deploy: {replicas: REPLICAS}
  worker:
    command: sleep 1000
    networks: [shared]
networks:
  shared:
    external: true
"""


class FakeAgent:
    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {
            "n0": {"ID": "n0", "Name": "shared", "Labels": {}}
        }
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, host: str | None, method: str, params: Any = None) -> Any:
        params = params or {}
        self.calls.append((method, params))
        label = params.get("label")
        if method == "network_ls":
            nets = [n for n in self.networks.values() if not label or has_label(n["Labels"], label)]
            return {"networks": nets}
        if method == "network_create":
            nid = f"n{len(self.networks)}"
            self.networks[nid] = {"ID": nid, "Name": params["name"], "Labels": params["labels"]}
            return {"id": nid}
        if method == "network_rm":
            del self.networks[params["network"]]
            return {}
        if method == "service_ls":
            views = [
                {"ID": sid, "Name": s["name"], "Labels": s["labels"], "Mode": s["mode"],
                 "Replicas": f"0/{s['replicas']}", "Command": " ".join(s["command"]), "Ports": ""}
                for sid, s in self.services.items()
                if not label or has_label(s["labels"], label)
            ]  # fmt: skip
            return {"services": views}
        if method == "service_create":
            sid = f"s{len(self.services)}"
            self.services[sid] = check_spec(params["spec"])
            return {"id": sid}
        if method == "service_inspect":
            return {"id": params["service"], "spec": self.services[params["service"]]}
        if method == "service_update":
            self.services[params["service"]] = check_spec(params["spec"])
            return {"id": params["service"], "version": 2}
        if method == "service_rm":
            del self.services[params["service"]]
            return {}
        raise AssertionError(method)

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls if not m.endswith("_ls") and m != "service_inspect"]


def run(agent: FakeAgent, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with mock.patch.object(sk, "_call", agent):
        code = main(["stack", *args])
    got = capsys.readouterr()
    return code, got.out + got.err


def test_deploy_redeploy_prune_and_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = FakeAgent()
    f = tmp_path / "s.yml"
    f.write_text(FILE.replace("REPLICAS", "2"))
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0, out
    assert agent.methods() == ["network_create", "service_create", "service_create"]
    assert agent.calls[1] == ("network_create", {
        "name": "app_default", "driver": "overlay",
        "labels": {"com.docker.stack.namespace": "app", "meshkit.stack": "app"},
    })  # fmt: skip
    assert {s["name"] for s in agent.services.values()} == {"app_web", "app_worker"}

    agent.calls.clear()
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0 and agent.methods() == []
    assert "Service app_web is unchanged" in out

    f.write_text(FILE.replace("REPLICAS", "4"))
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0 and agent.methods() == ["service_update"]
    assert agent.services["s0"]["replicas"] == 4

    agent.calls.clear()
    f.write_text(FILE.replace("REPLICAS", "4").split("  worker:")[0])
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0 and agent.methods() == []
    assert "Service app_worker is no longer in the file: kept (`--prune` removes it)" in out
    code, out = run(agent, capsys, "deploy", "--prune", "-c", str(f), "app")
    assert code == 0 and agent.methods() == ["service_rm"] and "Removing service app_worker" in out

    code, out = run(agent, capsys, "ls", "--format", "json")
    assert code == 0 and '"Name": "app"' in out and '"Services": "1"' in out

    agent.calls.clear()
    code, out = run(agent, capsys, "rm", "app")
    assert code == 0, out
    assert agent.methods() == ["service_rm", "network_rm"]  # services first
    assert list(agent.networks) == ["n0"]  # the external network stays
    code, out = run(agent, capsys, "rm", "app")
    assert code == 1 and "nothing found in stack: app" in out


def test_missing_external_network_and_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = FakeAgent()
    del agent.networks["n0"]
    f = tmp_path / "s.yml"
    f.write_text(FILE.replace("REPLICAS", "1"))
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 1 and "network shared is declared as external but does not exist" in out
    assert agent.methods() == []
    f.write_text("services:\n  web:\n    command: x\n    privileged: true\n")
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 2 and f"{f}:4: services.web.privileged: not supported yet" in out
    code, out = run(agent, capsys, "deploy", "-c", str(tmp_path / "none.yml"), "app")
    assert code == 2 and "none.yml" in out
