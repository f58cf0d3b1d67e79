"""`meshkit secret|config` and the service flags that name them, without an agent (the API
call is replaced by a recorder; tests/cluster/test_secrets_agents.py uses real agents)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import meshkit.cli.secret as sc
import meshkit.cli.service as svc
from meshkit.cli import main
from meshkit.cli.servicespec import build_spec

VIEW = {"ID": "a" * 25, "Name": "db", "Labels": {"k": "v"}, "CreatedAt": 0.0, "UpdatedAt": 0.0}


class Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def __call__(self, host: str | None, method: str, params: Any = None) -> Any:
        self.calls[method] = params
        if method.endswith("_ls"):
            return {method.split("_")[0] + "s": [VIEW]}
        if method == "config_inspect":
            return {**VIEW, "Data": base64.b64encode(b"port = 1\n").decode()}
        if method == "service_inspect":
            spec = build_spec({"name": "w", "command": ["true"], "secret": ["old"]})
            return {"id": "abc", "spec": spec}
        return {"id": "a" * 25, "name": "db", "version": 2}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, Recorder]:
    rec = Recorder()
    with mock.patch.object(sc, "_call", rec), mock.patch.object(svc, "_call", rec):
        code = main(list(args))
    got = capsys.readouterr()
    return code, got.out + got.err, rec


def test_create_sends_base64_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"s3cret\n")
    code, out, rec = run(capsys, "secret", "create", "-l", "env=prod", "db", str(f))
    assert code == 0 and out.strip() == "a" * 25
    params = rec.calls["secret_create"]
    assert base64.b64decode(params["data"]) == b"s3cret\n" and params["labels"] == {"env": "prod"}


def test_create_refuses_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (500 * 1024 + 1))
    code, out, rec = run(capsys, "secret", "create", "db", str(big))
    assert code == 1 and "less than 512000 bytes" in out and not rec.calls
    code, out, rec = run(capsys, "config", "create", "a/b", str(big))
    assert code == 2 and "invalid name" in out and not rec.calls
    code, out, rec = run(capsys, "secret", "create", "db", str(tmp_path / "none"))
    assert code == 1 and "cannot read the secret" in out


def test_ls_columns_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "secret", "ls")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "NAME", "CREATED", "UPDATED"]
    code, out, _ = run(capsys, "config", "ls", "--format", "json")
    assert json.loads(out)[0]["Name"] == "db"


def test_config_inspect_pretty_shows_data(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "inspect", "--pretty", "db")
    assert code == 0 and "Data:\nport = 1" in out and " - k=v" in out


def test_service_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, rec = run(capsys, "service", "create", "--detach", "--name", "w",
                         "--secret", "src=db,target=pw,mode=0400", "--config", "c",
                         "--", "true")  # fmt: skip
    assert code == 0, out
    spec = rec.calls["service_create"]["spec"]
    assert spec["secrets"] == [
        {"source": "db", "target": "pw", "uid": "0", "gid": "0", "mode": 0o400}
    ]
    assert spec["configs"][0]["target"] == "/run/configs/c"
    code, out, rec = run(capsys, "service", "update", "w", "--detach",
                         "--secret-rm", "old", "--secret-add", "src=new,target=old")  # fmt: skip
    assert code == 0, out
    assert [r["source"] for r in rec.calls["service_update"]["spec"]["secrets"]] == ["new"]
    code, out, rec = run(capsys, "service", "create", "--detach", "--name", "w",
                         "--secret", "src=db,target=../x", "--", "true")  # fmt: skip
    assert code == 2 and "--secret" in out and "service_create" not in rec.calls
