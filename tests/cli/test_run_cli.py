"""`meshkit run` without a cluster: its flags, a command run in the node's own namespace (no
--network), exit codes as `docker run`'s, and the error when no agent answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "MESHKIT_HOST": "/nonexistent/meshkit.sock"}
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "run", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_without_a_network_the_command_runs_here_with_its_exit_code() -> None:
    r = run("-e", "GREETING=hello", "--", "sh", "-c", 'echo "$GREETING"; exit 4')
    assert (r.returncode, r.stdout) == (4, "hello\n"), r.stderr
    r = run("-i", "--", "cat", stdin="fed\n")
    assert (r.returncode, r.stdout) == (0, "fed\n"), r.stderr
    r = run("--", "cat", stdin="not fed\n")  # no -i: stdin is /dev/null
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    r = run("--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + 15, r.stderr


def test_bad_flags_and_missing_programs_are_named() -> None:
    r = run("--env", "NOEQUALS", "--", "true")
    assert r.returncode != 0 and "--env" in r.stderr and "KEY=VALUE" in r.stderr, r.stderr
    r = run("--", "no-such-program-here")
    assert r.returncode == 127 and "'no-such-program-here': not found in PATH" in r.stderr
    r = run("-t", "--", "true")
    assert r.returncode == 1 and "the input device is not a TTY" in r.stderr, r.stderr
    r = run()
    assert r.returncode == 2, r.stderr  # a usage error: no command
    r = run("--network", "net", "--", "true")
    assert r.returncode == 125 and "Error response from daemon" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
