"""`meshkit ingress --backends-file`: only a regular file of at most 1 MiB is read.

Pentest finding: /dev/zero took the ingress to gigabytes, a FIFO stalled all relaying. Now both
are refused at start with a one-line error, and a reload (SIGHUP) that meets one keeps the
running backends and keeps relaying.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.base.errors import MeshkitError
from meshkit.l4.spec import BACKENDS_FILE_MAX, parse_backends_file
from support.peers import Proc, backend_argv, free_port, ingress_argv, wait_stderr, wait_tcp

Spawn = Callable[..., Proc]


def _limit_memory() -> None:
    # on a regression (reading /dev/zero) the child fails at 2 GiB, not at the machine's end
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def run_ingress(backends_file: str) -> subprocess.CompletedProcess[str]:
    # a hang fails this through the timeout
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meshkit",
            "ingress",
            "--publish",
            f"127.0.0.1:{free_port()}:80",
            "--backends-file",
            backends_file,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=_limit_memory,
    )


def test_fifo_backends_file_is_refused_at_start(tmp_path: Path) -> None:
    fifo = tmp_path / "backends"
    os.mkfifo(fifo)
    started = time.monotonic()
    out = run_ingress(str(fifo))
    assert time.monotonic() - started < 15
    assert out.returncode == 1
    assert f"{fifo}: not a regular file (a FIFO)" in out.stderr
    assert "Traceback" not in out.stderr


def test_dev_zero_backends_file_is_refused_at_start() -> None:
    out = run_ingress("/dev/zero")
    assert out.returncode == 1
    assert "/dev/zero: not a regular file (a character device)" in out.stderr
    assert "Traceback" not in out.stderr


def test_oversized_backends_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "backends"
    f.write_text("127.0.0.1:1\n" + "#" * BACKENDS_FILE_MAX)
    out = run_ingress(str(f))
    assert out.returncode == 1
    assert f"{f}: larger than the 1 MiB limit for a backends file" in out.stderr
    with pytest.raises(MeshkitError, match="larger than the 1 MiB limit"):
        parse_backends_file(str(f))


def test_sighup_with_a_fifo_keeps_relaying(spawn: Spawn, tmp_path: Path) -> None:
    bport = free_port()
    backend = spawn(backend_argv(bport, "a"))
    wait_tcp(bport, backend)
    f = tmp_path / "backends"
    f.write_text(f"127.0.0.1:{bport}\n")
    port = free_port()
    ing = spawn(ingress_argv("--publish", f"127.0.0.1:{port}:80", "--backends-file", str(f)))
    wait_tcp(port, ing)
    f.unlink()
    os.mkfifo(f)  # nobody ever writes to it: reading it would block forever
    ing.signal(signal.SIGHUP)
    wait_stderr(ing, "not a regular file (a FIFO)")
    assert "reload failed" in ing.stderr()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.rstrip().endswith(b"a")
