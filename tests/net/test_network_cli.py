"""`meshkit network` and `meshkit doctor` flags: bad input is named before anything is sent,
and doctor without an agent still checks the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def meshkit(*args: str, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args, "--host", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--subnet", "198.18.0.1/24"], ["--subnet", "host bits set"]),
        (["--subnet", "198.18.0.0/30"], ["--subnet", "smallest"]),
        (["--subnet", "198.18.0.0/24", "--gateway", "198.18.1.1"], ["--gateway", "not a host"]),
        (["--gateway", "198.18.0.1"], ["--gateway", "needs a --subnet"]),
        (["--opt", "mtu=100"], ["--opt", "576 to 65485"]),
        (["--opt", "vlan=3"], ["--opt", "unknown option 'vlan'"]),
        (["--opt", "mtu"], ["--opt", "KEY=VALUE"]),
        (["--dataplane", "dpdk"], ["--dataplane", "auto, kernel or userspace"]),
        (["-d", "bridge"], ["--driver", "only the overlay driver"]),
    ],
)
def test_create_names_the_bad_flag(tmp_path: Path, args: list[str], words: list[str]) -> None:
    r = meshkit("network", "create", *args, "front", sock=tmp_path / "none.sock")
    assert r.returncode == 2, r.stderr
    for word in words:
        assert word in r.stderr
    assert "Traceback" not in r.stderr


def test_without_an_agent_the_error_says_so(tmp_path: Path) -> None:
    r = meshkit("network", "ls", sock=tmp_path / "none.sock")
    assert r.returncode == 1 and "cannot reach the agent" in r.stderr


@pytest.mark.root
def test_doctor_without_an_agent_checks_the_kernel(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the kernel checks make namespaces: root only")
    r = meshkit("doctor", sock=tmp_path / "none.sock")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "OK", "DETAIL"]
    assert any(ln.startswith("vxlan ") for ln in lines)
    assert "Data plane: " in r.stdout and "only the kernel was checked" in r.stdout
    report = json.loads(meshkit("doctor", "--json", sock=tmp_path / "none.sock").stdout)
    assert {c["name"] for c in report["kernel"]} >= {"netns", "bridge", "veth", "vxlan", "tap"}
    assert report["pairs"] == [] and "note" in report
