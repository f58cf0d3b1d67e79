"""Agents as processes on network-namespace hosts, driven through the CLI (shared by the
cluster tests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support import netns
from support.polling import until

ENV = {"MESHKIT_RAFT_TICK": "0.02"}
L = TypeVar("L", bound="Lab")


class Lab:
    def __init__(self, lab: netns.NetnsLab) -> None:
        self.lab = lab
        self.root = Path(tempfile.mkdtemp(prefix="mkn-"))
        self.procs: dict[str, netns.Spawned] = {}
        self.ids: list[str] = []  # node ids, once start_cluster made them

    def sock(self, host: str) -> str:
        return str(self.root / f"{host}.sock")

    def data(self, host: str) -> Path:
        return self.root / host

    def node(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshkit", "node", *args, "--host", self.sock(host)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **ENV},
        )

    def ok(self, host: str, *args: str) -> str:
        r = self.node(host, *args)
        assert r.returncode == 0, f"{host}: node {' '.join(args)}: {r.stderr}"
        return r.stdout

    def ls(self, host: str) -> dict[str, dict[str, Any]]:
        return {n["Hostname"]: n for n in json.loads(self.ok(host, "ls", "--format", "json"))}

    def leader(self, host: str) -> str | None:
        r = self.node(host, "ls", "--format", "json")
        if r.returncode != 0:
            return None
        for n in json.loads(r.stdout):
            if n["ManagerStatus"] == "Leader":
                return str(n["Hostname"])
        return None

    def start(self, host: str, *args: str) -> None:
        argv = [sys.executable, "-m", "meshkit", "node", *args]
        argv += ["--data-dir", str(self.data(host)), "--host", self.sock(host)]
        self.procs[host] = self.lab.spawn(host, argv, env=ENV)
        self.wait_up(host)

    def wait_up(self, host: str) -> None:
        def up() -> bool:
            proc = self.procs[host]
            if proc.popen.poll() is not None:
                raise AssertionError(f"{host} exited:\n{proc.output()[-3000:]}")
            return self.node(host, "inspect", "self").returncode == 0 or (
                self.node(host, "ls").returncode == 1
                and "not a swarm manager" in self.node(host, "ls").stderr
            )

        until(up, 40, f"{host} up")

    def kill(self, host: str) -> None:
        proc = self.procs[host]
        proc.popen.kill()
        proc.popen.wait(10)

    def cli(
        self, *args: str, host: str = "m1", timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """`meshkit ARGS...` against the agent on `host` (`--host` goes before any `--`)."""
        argv = list(args)
        at = argv.index("--") if "--" in argv else len(argv)
        argv[at:at] = ["--host", self.sock(host)]
        return subprocess.run(
            [sys.executable, "-m", "meshkit", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **ENV, "COLUMNS": "250"},
        )

    def cli_ok(self, *args: str, host: str = "m1") -> str:
        r = self.cli(*args, host=host)
        assert r.returncode == 0, f"meshkit {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def tasks(self, name: str) -> list[dict[str, Any]]:
        return list(json.loads(self.cli_ok("service", "ps", name, "--format", "json")))

    def running(self, name: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(name)
            if t["State"] == "running" and t["DesiredState"] == "running"
        ]

    def rm_service(self, name: str) -> None:
        self.cli("service", "rm", name)
        until(lambda: self.cli("service", "ps", name).returncode != 0, 30, f"{name} removed")

    def node_ids(self, host: str = "m1") -> dict[str, str]:
        """Hostname -> node id, as `node ls` on `host` says."""
        nodes = json.loads(self.cli_ok("node", "ls", "--format", "json", host=host))
        return {n["Hostname"]: n["ID"] for n in nodes}

    def start_cluster(self, manager: str, workers: tuple[str, ...]) -> None:
        """`manager` inits a cluster (heartbeat 1 s) and the workers join it, each on its lab
        host of the same name; returns once every node is listed."""
        ip = self.lab.addr
        self.start(
            manager, "init", "--advertise-addr", ip(manager), "--hostname", manager,
            "--dispatcher-heartbeat", "1s",
        )  # fmt: skip
        token = self.ok(manager, "join-token", "-q", "worker").strip()
        for w in workers:
            self.start(
                w, "join", "--token", token, f"{ip(manager)}:2377", "--advertise-addr", ip(w),
                "--hostname", w,
            )  # fmt: skip
        until(lambda: len(self.ls(manager)) == 1 + len(workers), 30, "every node listed")
        self.ids = list(self.node_ids(manager).values())

    def python(self, host: str, code: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run(host, [sys.executable, "-c", textwrap.dedent(code)], check=False)

    def close(self) -> None:
        for proc in self.procs.values():
            self.lab.stop(proc)
        shutil.rmtree(self.root, ignore_errors=True)
        # agents leave their overlay namespaces up over a restart; this lab is gone for good
        for name in overlay_namespaces(self.ids):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def overlay_namespaces(node_ids: list[str]) -> list[str]:
    """The overlay namespaces (mkn-<net>-<node>) under /run/netns of these nodes."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return []
    return [n for n in names if n.startswith("mkn-") and any(n.endswith(i[:8]) for i in node_ids)]


@contextlib.contextmanager
def lab_cluster(
    cls: type[L], hosts: tuple[str, ...] = ("m1", "w1", "w2"), mtu: int | None = None
) -> Iterator[L]:
    """A cluster of agents on fresh namespace hosts: the first host inits it, the others join
    as workers. Everything is stopped and removed afterwards, also when the test fails; skipped
    where namespaces cannot be made."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    nl = netns.NetnsLab()
    c = cls(nl)
    try:
        for h in hosts:
            nl.add_host(h, mtu=mtu)
        c.start_cluster(hosts[0], hosts[1:])
        yield c
    finally:
        try:
            c.close()
        finally:
            nl.close()
