"""A real etcd (Debian's etcd-server, /usr/bin/etcd) for the tests of the etcd cluster store:
one member on a temporary data dir and free ports, removed afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ETCD = "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Etcd:
    """One etcd member on `host`; `spawn` runs it (in a namespace host, say)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]] | None = None,
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="mketcd-"))
        self.client_port = free_port() if host == "127.0.0.1" else 2379
        self.peer_port = free_port() if host == "127.0.0.1" else 2380
        self._spawn = spawn
        self._probe = probe  # how to ask /health from where etcd runs (a namespace host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            ETCD,
            "--name", "t",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.http,
            "--advertise-client-urls", self.http,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}",
            "--log-level", "error",
            "--logger", "zap",
        ]  # fmt: skip

    def start(self, wait: bool = True) -> None:
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - the child holds it
        if self._spawn is not None:
            self.proc = self._spawn(self.argv())
        else:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log()[-2000:]}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise AssertionError(f"etcd not healthy within {timeout} s: {self.log()[-2000:]}")

    def healthy(self) -> bool:
        if self._probe is not None:
            return self._probe(self.http + "/health")
        try:
            with urllib.request.urlopen(self.http + "/health", timeout=1) as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "etcd.log").read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_etcd() -> Iterator[Etcd]:
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} missing (Debian's etcd-server; scripts/install-test-deps)")
    e = Etcd()
    try:
        e.start()
        yield e
    finally:
        e.close()
