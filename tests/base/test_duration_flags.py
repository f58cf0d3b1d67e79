"""Every flag and Caddyfile directive that takes a duration takes the one grammar
(meshkit.base.durations): `5s` is accepted, a bare `5` is refused with an error naming the flag
(or the directive and its file:line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import meshkit.cli
import meshkit.cli.service as service_cli
import meshkit.l4.ingress
from meshkit.base.errors import FlagError
from meshkit.cli import main, servicespec
from meshkit.web.caddyfile.load import load_text

NEEDS_UNIT = "a number needs a unit (ns, us, ms, s, m, h), e.g. 5s"

# --- meshkit ingress ------------------------------------------------------------------------

INGRESS_FLAGS = [
    "--health-interval",
    "--health-timeout",
    "--connect-timeout",
    "--idle-timeout",
    "--grace-period",
    "--fail-timeout",
]


def _ingress(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> tuple[int, str, Any]:
    """Run `meshkit ingress` in-process up to the point it would start serving."""
    started: list[Any] = []

    def run_loop(coro: Any) -> None:
        started.append(coro)

    def run_ingress(config: Any, source: Any = None) -> Any:
        return config

    with (
        mock.patch.object(meshkit.l4.ingress, "run_ingress", run_ingress),
        mock.patch.object(meshkit.cli, "run_loop", run_loop),
        mock.patch.object(meshkit.cli, "setup_logging", lambda level="info": None),
    ):
        code = main(["ingress", "--publish", "18080:80", "--backend", "127.0.0.1", flag, value])
    err = capsys.readouterr().err
    return code, err, started[0] if started else None


@pytest.mark.parametrize("flag", INGRESS_FLAGS)
def test_ingress_flags(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, err, config = _ingress(capsys, flag, "5")
    assert code == 2 and f'invalid duration "5" for {flag}: {NEEDS_UNIT}' in err
    code, err, config = _ingress(capsys, flag, "5s")
    assert code == 0, err
    assert getattr(config, flag[2:].replace("-", "_")) == 5.0


# --- meshkit service create / update -------------------------------------------------------

SERVICE_FLAGS = [
    "--stop-grace-period",
    "--restart-delay",
    "--restart-window",
    "--update-delay",
    "--update-monitor",
    "--health-interval",
    "--health-timeout",
    "--health-start-period",
]


def _health(flag: str) -> list[str]:
    return ["--health-cmd", "true"] if flag.startswith("--health") else []


class _Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def __call__(self, host: str | None, method: str, params: Any = None) -> Any:
        self.calls[method] = params
        if method == "service_inspect":
            spec = servicespec.build_spec({"name": "w", "command": ["sleep", "1"]})
            return {"id": "abc", "spec": spec}
        return {"id": "abc", "name": "w", "version": 2}


def _service(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, _Recorder]:
    rec = _Recorder()
    with mock.patch.object(service_cli, "_call", rec):
        code = main(["service", *args])
    return code, capsys.readouterr().err, rec


@pytest.mark.parametrize("flag", SERVICE_FLAGS)
@pytest.mark.parametrize("command", ["create", "update"])
def test_service_flags(capsys: pytest.CaptureFixture[str], flag: str, command: str) -> None:
    head = ["create", "--name", "w"] if command == "create" else ["update", "w"]
    tail = ["--", "true"] if command == "create" else []
    # 7s: 5s is the default of some of them, and an update that changes nothing is not sent.
    for value, ok in (("5", False), ("7s", True)):
        code, err, rec = _service(capsys, *head, "--detach", *_health(flag), flag, value, *tail)
        if ok:
            assert code == 0, err
            assert f"service_{command}" in rec.calls
        else:
            assert code == 2 and f'invalid duration "5" for {flag}: {NEEDS_UNIT}' in err
            assert f"service_{command}" not in rec.calls  # nothing sent


@pytest.mark.parametrize("key", ["rollback_delay", "rollback_monitor"])
def test_spec_only_duration_flags(key: str) -> None:
    flags = {"name": "w", "command": ["true"]}
    assert servicespec.build_spec({**flags, key: "5s"})["rollback"][key[9:]] == 5.0
    with pytest.raises(FlagError, match=f'invalid duration "5" for --{key.replace("_", "-")}'):
        servicespec.build_spec({**flags, key: "5"})


# --- meshkit node init and meshkit web (argument checks happen before anything runs) --------


def _meshkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("flag", ["--dispatcher-heartbeat", "--cert-expiry"])
def test_node_init_flags(tmp_path: Path, flag: str) -> None:
    # A bad --log-level is checked after the durations: naming it means the duration passed.
    base = ["node", "init", "--data-dir", str(tmp_path), "--log-level", "bogus"]
    r = _meshkit(*base, flag, "5")
    assert r.returncode == 2 and f'invalid duration "5" for {flag}: {NEEDS_UNIT}' in r.stderr
    r = _meshkit(*base, flag, "5s")
    assert r.returncode == 2 and "--log-level" in r.stderr and flag not in r.stderr


def test_web_grace(tmp_path: Path) -> None:
    (tmp_path / "Caddyfile").write_text("127.0.0.1:2015\n")
    base = ["web", "-validate", "-conf", str(tmp_path / "Caddyfile")]
    r = _meshkit(*base, "-grace", "5", cwd=tmp_path)
    assert r.returncode == 2 and f'invalid duration "5" for -grace: {NEEDS_UNIT}' in r.stderr
    r = _meshkit(*base, "-grace", "5s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# --- Caddyfile directives -------------------------------------------------------------------

PROXY = ["fail_timeout", "try_duration", "try_interval", "timeout"]
PROXY_POSITIVE = ["health_check_interval", "health_check_timeout"]
FASTCGI = ["connect_timeout", "read_timeout", "send_timeout"]


def _caddyfile(directive: str, name: str, value: str) -> list[str]:
    target = "127.0.0.1:9000" if directive == "fastcgi" else "127.0.0.1:1"
    text = f"127.0.0.1:2015\n{directive} / {target} {{\n  {name} {value}\n}}\n"
    return [str(e) for e in load_text(text, "Sitefile").errors]


@pytest.mark.parametrize(
    ("directive", "name"),
    [("proxy", n) for n in PROXY + PROXY_POSITIVE] + [("fastcgi", n) for n in FASTCGI],
)
def test_caddyfile_directives(directive: str, name: str) -> None:
    assert _caddyfile(directive, name, "5s") == []
    assert _caddyfile(directive, name, "5") == [
        f'Sitefile:3 - invalid duration "5" for {name}: {NEEDS_UNIT}'
    ]
