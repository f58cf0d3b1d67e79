"""Real peer processes for the tests: backends, nginx, the ingress itself.

Every process a test starts is tracked and stopped by its pid at the end of the test; each
keeps its stderr in a file so that a failure shows what the process said.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_GIVEN: list[int] = []  # the ports handed out lately, never handed out again meanwhile
_GIVEN_KEEP = 2048


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on every address, taken from just below the kernel's ephemeral range: a
    port the kernel hands out (bind to 0) is soon somebody's outgoing connection's, and a
    server started on it a moment later failed with EADDRINUSE on a busy CI machine. A port
    handed out lately is not handed out again: a test takes several before it starts what
    listens on them (pebble's four and the server's own), and two equal draws collided."""
    high = _ephemeral_low() - 1
    low = max(1024, high - 12000)
    for _ in range(200):
        port = random.randint(low, high)
        if port in _GIVEN:
            continue
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("0.0.0.0", port))
        except OSError:
            continue
        _GIVEN.append(port)
        del _GIVEN[:-_GIVEN_KEEP]
        return port
    with socket.socket(socket.AF_INET, kind) as s:  # the range is full: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its stderr in a temp file, stopped by pid."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
    ) -> None:
        self.argv = argv
        # Closed in stop(), after the process is gone.
        self.errfile = tempfile.NamedTemporaryFile(prefix="meshkit-test-", suffix=".err")  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            stdout=stdout,
            stderr=self.errfile,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return Path(self.errfile.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.errfile.close()


def wait_tcp(port: int, proc: Proc, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.argv[:3]} exited {proc.popen.returncode}: {proc.stderr()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.argv[:3]} not listening on {port}: {proc.stderr()}")


def wait_stderr(proc: Proc, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.stderr():
            return
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.argv[:3]} never said {text!r}: {proc.stderr()}")


def backend_argv(port: int, name: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(HERE / "backend_server.py"),
        "--port",
        str(port),
        "--name",
        name,
        *flags,
    ]


def ingress_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshkit", "ingress", *args]


def nginx_conf(tmp: Path, sites: dict[int, str]) -> Path:
    """An nginx config (own prefix, no daemon) answering each port with its site's name."""
    servers = "\n".join(
        f'    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{name}\\n"; }} }}'
        for port, name in sites.items()
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{servers}
}}
"""
    )
    return conf
