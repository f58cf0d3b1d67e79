"""Node agents as processes on 127.0.0.1 (their own data dirs and sockets), and clusters of them."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshkit.cluster.rpc import local as mkclient
from meshkit.cluster.rpc.pki import NodeIdentity
from meshkit.cluster.rpc.transport import RpcError
from support.polling import until

PERIOD = "1s"  # heartbeat period in these tests: Down after 3 s without a beat


ENV = {"MESHKIT_RAFT_TICK": "0.02"}


class Agent:
    def __init__(self, name: str, ip: str, root: Path) -> None:
        self.name = name
        self.ip = ip
        self.data = root / name
        self.sock = str(root / f"{name}.sock")
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshkit", "node", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )

    def wait_up(self, timeout: float = 30) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                info = mkclient.call(self.sock, "info", timeout=2)
            except RpcError:
                return False
            return bool(info.get("initialized"))

        until(up, timeout, f"{self.name} up")

    def node(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshkit("node", *args, host=self.sock)

    def ok(self, *args: str) -> str:
        r = self.node(*args)
        assert r.returncode == 0, f"{self.name}: node {' '.join(args)}: {r.stderr}"
        return r.stdout

    def info(self) -> dict[str, Any]:
        return dict(mkclient.call(self.sock, "info", timeout=5))

    def ls(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("ls", "--format", "json")))

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def identity(self) -> NodeIdentity:
        return NodeIdentity.load(self.data / "certs")


class Cluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mk-"))
        net = random.randint(100, 250)
        self.prefix = f"127.{net}.{random.randint(1, 250)}."
        self.agents: dict[str, Agent] = {}

    def agent(self, name: str, last: int) -> Agent:
        a = Agent(name, f"{self.prefix}{last}", self.root)
        self.agents[name] = a
        return a

    def init(self, name: str, last: int, *extra: str) -> Agent:
        a = self.agent(name, last)
        a.start(
            "init", "--advertise-addr", a.ip, "--listen-addr", f"{a.ip}:2377",
            "--data-dir", str(a.data), "--host", a.sock, "--hostname", name,
            "--dispatcher-heartbeat", PERIOD, *extra,
        )  # fmt: skip
        a.wait_up()
        return a

    def join(self, name: str, last: int, token: str, via: Agent) -> Agent:
        a = self.agent(name, last)
        a.start(
            "join", "--token", token, f"{via.ip}:2377", "--advertise-addr", a.ip,
            "--listen-addr", f"{a.ip}:2377", "--data-dir", str(a.data), "--host", a.sock,
            "--hostname", name,
        )  # fmt: skip
        a.wait_up()
        return a

    def restart(self, a: Agent) -> None:
        a.start("run", "--data-dir", str(a.data), "--host", a.sock)
        a.wait_up()

    def close(self) -> None:
        for a in self.agents.values():
            a.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def token(a: Agent, role: str) -> str:
    return a.ok("join-token", "-q", role).strip()




def meshkit(
    *args: str, host: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "meshkit", *args]
    if host is not None:
        argv += ["--host", host]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV}
    )


