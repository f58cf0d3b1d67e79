"""The manager processes of bench/cluster_heartbeats.py: `Manager` (one agent in the
foreground, in its own session, stopped by pid) and `Cluster` (the managers: started, formed
into one raft group, asked who leads, stopped)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from cluster_bench_util import (
    SRC_DIR,
    BenchError,
    free_port,
    log,
    pin,
    tail,
    view_get,
)
from meshkit.cluster.rpc.transport import (
    RpcClient,
    RpcError,
)

# --------------------------------------------------------------------------- the managers


class Manager:
    """One manager agent in the foreground, in its own session, stopped by pid."""

    def __init__(self, index: int, tmp: Path) -> None:
        self.index = index
        self.name = f"m{index + 1}"
        self.host = f"127.0.0.{index + 1}"
        self.port = free_port(self.host)
        self.raft_port = free_port(self.host, avoid=(self.port,))
        self.socket = str(tmp / f"{self.name}.sock")
        self.data_dir = tmp / self.name
        self.logfile = tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []
        self.stopped = False  # stopped on purpose (the failover step)

    @property
    def api_addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, args: argparse.Namespace, join: tuple[str, str] | None) -> None:
        """``node init`` (join None) or ``node join --token TOKEN ADDR`` (join = token, addr)."""
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{SRC_DIR}{os.pathsep}{old}" if old else str(SRC_DIR)
        common = [
            "--advertise-addr",
            self.host,
            "--listen-addr",
            self.api_addr,
            "--raft-port",
            str(self.raft_port),
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.socket,
            "--hostname",
            f"bench-{self.name}",
            "--log-level",
            "warning",
        ]
        # --store etcd: the managers keep the log in the bench's etcd (other benches that
        # start managers through this class, cluster_chaos.py, have no such option)
        store_url = getattr(args, "store_url", "")
        if store_url:
            common += ["--store", store_url]
        if join is None:
            sub = ["init", *common, "--dispatcher-heartbeat", f"{args.period:g}s"]
        else:
            token, addr = join
            sub = ["join", "--token", token, *common, addr]
        self.cmd = [*args.meshkit_cmd.split(), "node", *sub]
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us only; we stop it by pid
                preexec_fn=pin(args.manager_core, getattr(args, "manager_nice", 0)),
                env=env,
            )
        shown = [("<manager token>" if c == join[0] else c) for c in self.cmd] if join else self.cmd
        log(f"{self.name} pid {self.pid} on {self.api_addr}: {' '.join(shown)}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.stopped or self.proc is None:
            return
        if self.proc.poll() is not None:
            raise BenchError(
                f"manager {self.name} ({self.api_addr}) exited with status "
                f"{self.proc.returncode}; its output:\n{tail(self.logfile)}"
            )

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> Any:
        """One call on the manager's local socket."""
        client = await RpcClient.connect_unix(self.socket, timeout=5)
        try:
            return await client.call(method, params or {}, timeout=timeout)
        finally:
            await client.close()

    async def wait_up(self, timeout: float) -> None:
        """Until the agent answers ``info`` as a manager holding the cluster state."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                info = await self.call("info")
                if info.get("initialized") and info.get("role") == "manager":
                    return
                last = f"info said role={info.get('role')} initialized={info.get('initialized')}"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
        raise BenchError(
            f"manager {self.name} did not come up within {timeout:.0f} s ({last}); its output:\n"
            f"{tail(self.logfile)}"
        )

    def signal_stop(self) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"warning: {self.name} did not stop within {timeout:g} s of SIGTERM; killed")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=5)


class Cluster:
    """The managers: started, formed into one raft group, asked who leads, stopped."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.managers = [Manager(i, tmp) for i in range(args.managers)]

    @property
    def first(self) -> Manager:
        return self.managers[0]

    def live(self) -> list[Manager]:
        return [m for m in self.managers if not m.stopped]

    def check_alive(self) -> None:
        for m in self.managers:
            m.check_alive()

    def by_addr(self, host: str) -> Manager | None:
        return next((m for m in self.managers if m.host == host), None)

    async def start(self) -> None:
        first = self.first
        first.start(self.args, None)
        await first.wait_up(60)
        if len(self.managers) > 1:
            reply = await first.call("join_token", {"role": "manager", "rotate": False})
            for m in self.managers[1:]:
                m.start(self.args, (reply["token"], first.api_addr))
                await m.wait_up(60)
                await self.wait_formed(m.index + 1, 60)
        await self.wait_formed(len(self.managers), 60)

    async def wait_formed(self, count: int, timeout: float) -> None:
        """Until node ls on the first shows `count` managers Ready, one Leader, the rest
        Reachable, and every one of them has the state with quorum and a leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                reply = await self.first.call("node_ls")
                mgrs = [v for v in reply.get("nodes", []) if view_get(v, "Role") == "manager"]
                statuses = sorted(str(view_get(v, "ManagerStatus")) for v in mgrs)
                ready = all(str(view_get(v, "Status")).lower() == "ready" for v in mgrs)
                want = sorted(["Leader"] + ["Reachable"] * (count - 1))
                if len(mgrs) == count and ready and statuses == want:
                    ok = True
                    for m in self.managers[:count]:
                        st = await m.call("cluster_status")
                        if not st.get("has_quorum") or not st.get("leader"):
                            ok = False
                            last = f"{m.name}: cluster_status {st}"
                    if ok:
                        return
                else:
                    last = f"node ls shows {len(mgrs)} managers: {statuses}, all ready: {ready}"
            except RpcError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
        logs = "\n".join(f"--- {m.name}:\n{tail(m.logfile, 10)}" for m in self.managers)
        raise BenchError(
            f"the managers did not form a cluster of {count} within {timeout:.0f} s "
            f"({last}); their output:\n{logs}"
        )

    async def leader(self, timeout: float = 60.0) -> Manager:
        """The manager that says it is the raft leader (the one in the highest term, when an
        old leader has not heard of the new term yet)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            leaders = []
            for m in self.live():
                with contextlib.suppress(RpcError):
                    st = await m.call("cluster_status", timeout=5)
                    if st.get("is_leader"):
                        leaders.append((int(st.get("term") or 0), m))
            terms = sorted(t for t, _ in leaders)
            if len(leaders) == 1 or (len(terms) > 1 and terms[-1] > terms[-2]):
                return max(leaders, key=lambda tm: tm[0])[1]
            last = f"{len(leaders)} managers say they lead (terms {terms})"
            await asyncio.sleep(0.1)
        raise BenchError(f"no single raft leader within {timeout:.0f} s ({last})")

    def stop(self, m: Manager) -> None:
        m.stopped = True
        m.signal_stop()
        m.wait_stopped()

    def stop_all(self) -> None:
        for m in self.managers:
            m.signal_stop()
        for m in self.managers:
            m.wait_stopped()

    def logs(self, lines: int = 10) -> str:
        """The last lines of every started manager's output (none for those that had none)."""
        parts = [(m.name, tail(m.logfile, lines)) for m in self.managers if m.proc is not None]
        return "\n".join(f"--- {name} output:\n{text}" for name, text in parts if text)
