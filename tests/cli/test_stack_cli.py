"""`meshkit stack` against a fake agent: what deploy sends (create, update only what changed,
prune; secrets and configs made once, reused, refused when their file changed), and that rm
removes services before secrets, configs and networks. With real agents:
tests/cluster/test_stack_netns.py."""

from __future__ import annotations

import base64
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
        # kind -> id -> {"ID", "Name", "Labels", "Size"} + "data" (bytes, never in a view)
        self.files: dict[str, dict[str, dict[str, Any]]] = {"secret": {}, "config": {}}

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
        kind, _, verb = method.partition("_")
        if kind in self.files:
            items = self.files[kind]
            if verb == "ls":
                views = [{k: v for k, v in r.items() if k != "data"} for r in items.values()]
                return {kind + "s": views}
            if verb == "create":
                assert all(r["Name"] != params["name"] for r in items.values())
                data = base64.b64decode(params["data"])
                fid = f"{kind[0]}{len(items)}"
                items[fid] = {"ID": fid, "Name": params["name"], "Labels": params["labels"],
                              "Size": len(data), "data": data}  # fmt: skip
                return {"id": fid, "name": params["name"]}
            if verb == "inspect":
                rec = items[params[kind]]
                view = {k: v for k, v in rec.items() if k != "data"}
                if kind == "config":
                    view["Data"] = base64.b64encode(rec["data"]).decode()
                return view
            if verb == "rm":
                used = [
                    s["name"]
                    for s in self.services.values()
                    if any(r["source"] == items[params[kind]]["Name"] for r in s[kind + "s"])
                ]
                assert not used, used  # fmt: skip
                del items[params[kind]]
                return {}
        raise AssertionError(method)

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls if not m.endswith(("_ls", "_inspect"))]


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


SECRET_FILE = """
services:
  web:
    command: sleep 1000
    secrets: [db, {source: shared, target: api_key, mode: 0400}]
    configs: [{source: site, target: /etc/web.conf}]
secrets:
  db: {file: db.txt}
  shared: {external: true}
configs:
  site: {file: conf/site.conf}
"""


def test_secrets_and_configs_made_once_reused_and_refused_when_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = FakeAgent()
    f = tmp_path / "s.yml"
    f.write_text(SECRET_FILE)
    (tmp_path / "db.txt").write_bytes(b"hunter2-db-password")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "site.conf").write_text("listen 80\n")
    # an external secret that does not exist: named, with the file and line; nothing made
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 1, out
    assert f"{f}:9: secrets.shared: secret shared is declared as external but does not" in out
    assert agent.methods() == []

    agent.files["secret"]["x0"] = {"ID": "x0", "Name": "shared", "Labels": {}, "Size": 3,
                                   "data": b"key"}  # fmt: skip
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0, out
    assert agent.methods() == [
        "network_create", "secret_create", "config_create", "service_create"
    ]  # fmt: skip
    assert "Creating secret app_db" in out and "Creating config app_site" in out
    made = {r["Name"]: r for k in ("secret", "config") for r in agent.files[k].values()}
    assert made["app_db"]["data"] == b"hunter2-db-password"
    assert made["app_site"]["data"] == b"listen 80\n"
    labels = made["app_db"]["Labels"]
    assert labels["com.docker.stack.namespace"] == "app" and labels["meshkit.stack"] == "app"
    assert labels["meshkit.stack.digest"].startswith("sha256:")
    assert "hunter2" not in labels["meshkit.stack.digest"]
    assert made["shared"]["Labels"] == {}  # an external one is left as it is
    [spec] = agent.services.values()
    assert [(r["source"], r["target"], r["mode"]) for r in spec["secrets"]] == [
        ("app_db", "db", 0o444), ("shared", "api_key", 0o400)
    ]  # fmt: skip
    assert [(r["source"], r["target"]) for r in spec["configs"]] == [("app_site", "/etc/web.conf")]

    # the same files again: reused, nothing sent
    agent.calls.clear()
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0 and agent.methods() == [], out
    assert "Service app_web is unchanged" in out

    # a changed secret (same size, then another size) or config is refused, naming it,
    # without printing either content; nothing is changed
    for path, content, name in (
        (tmp_path / "db.txt", b"hunter3-db-password", "secret app_db"),
        (tmp_path / "db.txt", b"hunter2-db-password-2", "secret app_db"),
        (tmp_path / "conf" / "site.conf", b"listen 81\n", "config app_site"),
    ):
        old = path.read_bytes()
        path.write_bytes(content)
        code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
        assert code == 1, out
        assert f"{name} already exists with other content than {path}" in out
        assert "rename it" in out and "hunter" not in out and "listen" not in out
        assert agent.methods() == []
        path.write_bytes(old)
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0 and agent.methods() == [], out

    # rm: services, then the stack's secrets and configs, then networks; `shared` stays
    code, out = run(agent, capsys, "rm", "app")
    assert code == 0, out
    assert agent.methods() == ["service_rm", "secret_rm", "config_rm", "network_rm"]
    assert "Removing secret app_db" in out and "Removing config app_site" in out
    assert [r["Name"] for r in agent.files["secret"].values()] == ["shared"]
    assert agent.files["config"] == {}


def test_a_secret_file_that_cannot_be_read_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = FakeAgent()
    f = tmp_path / "s.yml"
    f.write_text(SECRET_FILE.replace("  shared: {external: true}\n", "  shared: {file: s}\n"))
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 1 and f"{f}:8: secrets.db: cannot read {tmp_path}/db.txt" in out, out
    assert agent.methods() == []


def test_a_hand_made_secret_is_compared_by_size_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = FakeAgent()
    f = tmp_path / "s.yml"
    f.write_text(SECRET_FILE)
    (tmp_path / "db.txt").write_bytes(b"abc")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "site.conf").write_text("listen 80\n")
    for name in ("shared", "app_db"):
        fid = f"x{len(agent.files['secret'])}"
        agent.files["secret"][fid] = {
            "ID": fid,
            "Name": name,
            "Labels": {},
            "Size": 3,
            "data": b"xyz",
        }
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 0, out
    assert "secret app_db exists and was not made by stack deploy" in out
    assert agent.methods() == ["network_create", "config_create", "service_create"]
    (tmp_path / "db.txt").write_bytes(b"abcd")
    code, out = run(agent, capsys, "deploy", "-c", str(f), "app")
    assert code == 1 and "secret app_db already exists with other content" in out, out
