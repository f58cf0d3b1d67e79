"""A throwaway etcd (Debian's etcd-server) for `cluster_heartbeats.py --store etcd`: one
member on 127.0.0.1, free ports, its data dir under the bench's temporary directory; stopped
by pid when the run ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "etcd"
        self.client = f"http://127.0.0.1:{_free_port()}"
        self.peer = f"http://127.0.0.1:{_free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "etcd://" + self.client.removeprefix("http://")

    def start(self, timeout: float = 20.0) -> None:
        if not os.path.exists(ETCD):
            raise RuntimeError(f"{ETCD} missing: apt-get install etcd-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            ETCD, "--name", "bench", "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
            "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
            "--initial-cluster", f"bench={self.peer}", "--log-level", "error",
            "--logger", "zap", "--quota-backend-bytes", str(4 << 30),
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "100000",
        ]  # fmt: skip
        with (self.dir / "etcd.log").open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.dir / 'etcd.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.client + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd at {self.client} not healthy within {timeout:g} s")

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
