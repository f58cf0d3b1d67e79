"""`meshkit web`'s Caddy v1 flags: -version, -plugins, -envfile, -cpu, -log and -pidfile, as
parsed and as a real process uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.base.errors import FlagError
from meshkit.cli.webflags import cpu_count, parse_envfile
from support.peers import Proc, free_port, wait_tcp

MESHKIT = [sys.executable, "-m", "meshkit", "web"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHKIT, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_envfile_grammar(tmp_path: Path) -> None:
    f = tmp_path / "a.env"
    f.write_text('# comment\n\n  A=1  \nB=x=y "z"\nEMPTY=\n')
    assert parse_envfile(str(f)) == {"A": "1", "B": 'x=y "z"', "EMPTY": ""}
    for text, reason in [
        ("A=1\nNOEQUALS\n", "line 2: expected KEY=VALUE"),
        ("=1\n", "line 1: the KEY is empty"),
        ("MY KEY=1\n", "white space"),
    ]:
        f.write_text(text)
        with pytest.raises(FlagError) as info:
            parse_envfile(str(f))
        assert "-envfile" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "available", "expected"),
    [("1", 4, 1), ("8", 4, 4), ("50%", 4, 2), ("10%", 4, 1), ("100%", 3, 3), ("33%", 3, 1)],
)
def test_cpu_count(value: str, available: int, expected: int) -> None:
    assert cpu_count(value, available) == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "0%", "101%", "%", "1.5"])
def test_cpu_count_errors(value: str) -> None:
    with pytest.raises(FlagError) as info:
        cpu_count(value, 4)
    assert "-cpu" in str(info.value)


def test_version_and_plugins() -> None:
    out = run("-version")
    assert out.returncode == 0 and out.stdout.strip().startswith("meshkit v")
    out = run("-plugins")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[:2] == ["Server types:", "  http"]
    assert "Caddyfile loaders:" in lines and "Other plugins:" in lines
    for name in ("http.websocket", "http.realip", "http.expvar", "http.request_id", "tls"):
        assert f"  {name}" in lines


def test_bad_flags_name_themselves(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("NOPE\n")
    out = run("-envfile", str(tmp_path / "bad.env"), "-version")
    assert out.returncode == 2 and "-envfile" in out.stderr and "line 1" in out.stderr
    assert "Traceback" not in out.stderr
    out = run("-envfile", str(tmp_path / "missing.env"))
    assert out.returncode == 2 and "-envfile" in out.stderr
    out = run("-cpu", "150%", "-validate", cwd=tmp_path)
    assert out.returncode == 2 and "-cpu" in out.stderr and "Traceback" not in out.stderr


def test_a_server_with_envfile_cpu_log_and_pidfile(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "web.env").write_text(f"SITE_PORT={port}\nGREETING=hello from envfile\n")
    (tmp_path / "Caddyfile").write_text(
        '127.0.0.1:{$SITE_PORT} {\n    header / X-G "{$GREETING}"\n}\n'
    )
    pidfile = tmp_path / "web.pid"
    logfile = tmp_path / "web.log"
    proc = Proc(
        [
            *MESHKIT,
            "-conf",
            str(tmp_path / "Caddyfile"),
            "-envfile",
            str(tmp_path / "web.env"),
            "-cpu",
            "1",
            "-log",
            str(logfile),
            "-pidfile",
            str(pidfile),
        ]
    )
    try:
        wait_tcp(port, proc)
        head = subprocess.run(
            ["curl", "-s", "-I", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "X-G: hello from envfile" in head
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfile.read_text().strip() == str(proc.pid)
        allowed = os.sched_getaffinity(proc.pid)
        assert len(allowed) == 1
        assert f"listening on 0.0.0.0:{port}" in logfile.read_text()
    finally:
        proc.stop()
