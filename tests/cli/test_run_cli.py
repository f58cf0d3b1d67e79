"""`meshkit run` without a cluster: its flags, a command run in the node's own namespace (no
--network), exit codes as `docker run`'s, and the error when no agent answers."""

from __future__ import annotations

import os
import pty
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


def on_pty(*args: str, ctrl_c_after: bytes = b"") -> tuple[str, int]:
    """`meshkit run ARGS` on a new pseudo-terminal: (what it wrote there, its exit code); with
    ``ctrl_c_after``, the terminal's Ctrl-C once that text has appeared."""
    argv = [sys.executable, "-m", "meshkit", "run", *args]
    env = {**os.environ, "PYTHONPATH": SRC, "MESHKIT_HOST": "/nonexistent/meshkit.sock"}
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, env)
    out = b""
    sent = False
    try:
        while chunk := os.read(fd, 4096):
            out += chunk
            if ctrl_c_after and not sent and ctrl_c_after in out:
                os.write(fd, b"\x03")  # the terminal's INTR character
                sent = True
    except OSError:  # EIO: the other side closed
        pass
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_the_terminal_with_and_without_t() -> None:
    out, code = on_pty("--", "sh", "-c", "test -t 1 || echo not-a-tty")
    assert code == 0 and "not-a-tty" in out, out  # no -t: output through a pipe, copied here
    out, code = on_pty("-t", "--", "sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty")
    assert code == 0 and "on-a-tty" in out, out
    # -t: the terminal's Ctrl-C reaches the command (meshkit run itself ignores it)
    script = 'trap "echo got-int; exit 6" INT; echo ready; while :; do sleep 0.2; done'
    out, code = on_pty("-t", "--", "sh", "-c", script, ctrl_c_after=b"ready")
    assert code == 6 and "got-int" in out, out
