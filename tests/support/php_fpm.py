"""A real php-fpm 8.2 for the FastCGI tests and benchmarks: own config in a temp dir, run as
root with -R, one pool on a loopback TCP port and one on a unix socket, stopped by pid.

    with php_fpm(tmp) as fpm:          # skips the test when php-fpm8.2 is not installed
        fpm.tcp        # "127.0.0.1:PORT"
        fpm.unix       # "unix:/tmp/.../php.sock"
        fpm.restart()  # stop and start again on the same addresses
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PHP_FPM = "/usr/sbin/php-fpm8.2"


def php_fpm_binary() -> str | None:
    if os.access(PHP_FPM, os.X_OK):
        return PHP_FPM
    return shutil.which("php-fpm8.2")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PhpFpm:
    """php-fpm8.2 in the foreground (-F), root allowed (-R), with two pools."""

    def __init__(self, binary: str, tmp: Path, children: int = 4) -> None:
        self.binary = binary
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.sock = self.dir / "php.sock"
        self.tcp = f"127.0.0.1:{self.port}"
        self.unix = f"unix:{self.sock}"
        self.log = self.dir / "php-fpm.log"
        self.conf = self.dir / "php-fpm.conf"
        pool = (
            "pm = static\n"
            f"pm.max_children = {children}\n"
            "catch_workers_output = yes\n"
            "decorate_workers_output = no\n"
            "clear_env = yes\n"
            "security.limit_extensions = .php\n"
        )
        self.conf.write_text(
            "[global]\n"
            f"pid = {self.dir}/php-fpm.pid\n"
            f"error_log = {self.log}\n"
            "daemonize = no\n"
            "log_level = notice\n"
            f"[tcp]\nlisten = {self.tcp}\nlisten.backlog = 511\nenv[FPM_POOL] = tcp\n{pool}"
            f"[unix]\nlisten = {self.sock}\nlisten.mode = 0666\nenv[FPM_POOL] = unix\n{pool}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = self.dir / "php-fpm.out"

    def start(self) -> None:
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-R", "-y", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"php-fpm exited {self.proc.returncode}: {self.output()}")
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"php-fpm never listened: {self.output()}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(self.sock))
        except OSError:
            return False
        return True

    def output(self) -> str:
        text = ""
        for p in (self.out, self.log):
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGQUIT: graceful; the master then stops its children itself
            os.kill(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def php_fpm(tmp: Path, children: int = 4) -> Iterator[PhpFpm]:
    """A started php-fpm (skips the test with the reason when php-fpm8.2 is missing)."""
    binary = php_fpm_binary()
    if binary is None:
        pytest.skip(f"php-fpm8.2 is not installed ({PHP_FPM} missing)")
    fpm = PhpFpm(binary, tmp, children)
    fpm.start()
    try:
        yield fpm
    finally:
        fpm.stop()
