"""What the CLI imports: `--version` and help stay light, and `meshkit ingress` (also with
`--service`, fed by the local agent) loads neither pysyncobj nor cryptography (pysyncobj's
import replaces socket.inet_ntop for the whole process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("pysyncobj", "cryptography", "pydantic", "uvloop", "asyncio", "yaml")

# Runs meshkit's main() on argv and prints, on the last line, which heavy packages and which
# meshkit modules were imported by then.
PROBE = """
import json, sys
from meshkit.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    print(json.dumps(sorted(m for m in sys.modules
        if m.split(".")[0] in ("pysyncobj", "cryptography", "pydantic", "uvloop", "asyncio",
                               "typer", "yaml")
        or m.startswith("meshkit."))), flush=True)
sys.exit(rc)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    if "MESHKIT_WHEEL_SITE" not in env:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _modules(stdout: str) -> set[str]:
    return set(json.loads(stdout.strip().splitlines()[-1]))


def _run(*argv: str) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    return proc.returncode, _modules(proc.stdout)


def _heavy(mods: set[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in mods} & set(HEAVY))


def test_version_imports_nothing_but_the_cli_package() -> None:
    rc, mods = _run("--version")
    assert rc == 0
    assert not any(m == "typer" or m.startswith("typer.") for m in mods)
    assert {m for m in mods if m.startswith("meshkit.")} == {"meshkit.cli"}


@pytest.mark.parametrize(
    "argv", [["--help"], ["service", "--help"], ["ingress", "--help"], ["stack", "--help"]]
)
def test_help_loads_no_machinery(argv: list[str]) -> None:
    rc, mods = _run(*argv)
    assert rc == 0
    assert _heavy(mods) == []
    assert not any(m.startswith("meshkit.cluster") for m in mods)


def test_service_ls_loads_only_the_local_client() -> None:
    rc, mods = _run("service", "ls", "--host", "/nonexistent/meshkit.sock")
    assert rc == 1  # the agent cannot be reached
    assert _heavy(mods) == ["asyncio"]  # the client's loop; no uvloop, no pydantic, no PKI
    assert "meshkit.cluster.rpc.local" in mods
    assert not any(
        m.startswith(
            (
                "meshkit.cluster.node",
                "meshkit.cluster.api.nodes",
                "meshkit.cluster.raft",
                "meshkit.cluster.model",
                "meshkit.web",
                "meshkit.l4",
            )
        )
        for m in mods
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ingress_service_path_loads_neither_pysyncobj_nor_cryptography(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PROBE,
            "ingress",
            "-p",
            f"127.0.0.1:{port}:80",
            "--service",
            "web",
            "--host",
            str(tmp_path / "agent.sock"),
            "--health-interval",
            "0s",
            "--grace-period",
            "0s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        # Up when its port answers; then give the service feed a moment to ask the agent.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "does not answer" in err, err  # the --service feed ran and tried the agent
    mods = _modules(out)
    assert not {m.split(".")[0] for m in mods} & {"pysyncobj", "cryptography"}
    assert not any(
        m.startswith(("meshkit.cluster.node.agent", "meshkit.cluster.raft")) for m in mods
    )
