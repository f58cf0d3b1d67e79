"""The node agent: one process, one uvloop loop, everything a node does for the cluster.

On every node the agent serves the local API on a Unix socket (default
/run/meshkit/meshkit.sock, mode 0660), sends a heartbeat every period (5 s by default) to a
manager and renews its certificate at a random point between 50 % and 80 % of its lifetime
(and when its role changes). On a manager it also serves the cluster API with mutual TLS on
the listen address (default 0.0.0.0:2377), runs the raft replica of the cluster state
(`RaftStore`, ticked from this loop) on the advertise address and the raft port, and, while it
is the raft leader, turns missed heartbeats into Down (3 missed beats) and a new beat into
Ready, and keeps the raft members equal to the managers in the state.

Ports: 2377/tcp the manager API (``--listen-addr``); the raft port is the listen port + 1
(2378/tcp) unless ``--raft-port`` says otherwise; raft binds to the advertise address.

Data dir (default /var/lib/meshkit, mode 0700):

    node.json        who this node is: node id, cluster id, role, hostname, addresses and
                     ports, the local socket, the managers it knows (API addresses)
    certs/           node.crt, node.key (0600), ca-bundle.crt: the node's identity
    raft/            managers only: journal, dump (raft snapshot), peers.json, secret,
                     datakey (the cluster data key the state's secrets are sealed with)

Every file in it is 0600 and every directory 0700 (`meshkit.base.files`); the agent
repairs the modes when it starts.
    agent.pid        with --detach: the agent's pid
    agent.log        with --detach: its log

An agent started again on the same data dir (`meshkit node run`) is the same node: a manager
replays its raft journal. `meshkit node leave` stops the agent and removes node.json, certs/,
raft/ and agent.pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from meshkit import __version__
from meshkit.base.errors import MeshkitError
from meshkit.base.files import make_private_dir, secure_tree, write_private
from meshkit.cluster.api.nodes import Api
from meshkit.cluster.model import state as cstate
from meshkit.cluster.node.service_loops import Dispatch
from meshkit.cluster.raft.sealing import (
    DATA_KEY_FILE,
    Sealer,
    load_data_key,
    new_data_key,
    save_data_key,
)
from meshkit.cluster.raft.store import RaftStore, RaftTimings
from meshkit.cluster.rpc.pki import (
    NodeIdentity,
    client_ssl_context,
    new_node_key_and_csr,
    server_ssl_context,
)
from meshkit.cluster.rpc.transport import Peer, RpcClient, RpcError, RpcServer
from meshkit.mesh.node import NodeMesh
from meshkit.net.overlay import NodeOverlay

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/meshkit"
DEFAULT_SOCKET = "/run/meshkit/meshkit.sock"
DEFAULT_PORT = 2377
NODE_FILE = "node.json"
CERT_DIR = "certs"
RAFT_DIR = "raft"
PID_FILE = "agent.pid"
LOG_FILE = "agent.log"
SECRET_FILE = "secret"
MISSED_BEATS = 3


@dataclass
class NodeConfig:
    """node.json: what a node needs to start again as itself."""

    node_id: str
    cluster_id: str
    role: str
    hostname: str
    advertise_addr: str
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    raft_port: int = DEFAULT_PORT + 1
    socket: str = DEFAULT_SOCKET
    managers: list[str] = field(default_factory=list)
    heartbeat_period: float = 5.0
    web: str = ""  # a Caddyfile the agent serves on its own loop (`--web`)

    @classmethod
    def load(cls, data_dir: Path) -> NodeConfig:
        path = Path(data_dir) / NODE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MeshkitError(
                f"{data_dir} holds no node: start one with `meshkit node init` or "
                "`meshkit node join`"
            ) from None
        except (OSError, ValueError) as exc:
            raise MeshkitError(f"cannot read {path}: {exc}") from None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, data_dir: Path) -> None:
        write_private(Path(data_dir) / NODE_FILE, json.dumps(asdict(self), indent=2) + "\n")


def raft_timings_from_env() -> RaftTimings:
    """RaftTimings, with MESHKIT_RAFT_TICK / MESHKIT_RAFT_ELECTION (min,max) for tests."""
    t = RaftTimings()
    tick = os.environ.get("MESHKIT_RAFT_TICK")
    if tick:
        t = dataclasses.replace(t, tick=float(tick))
    election = os.environ.get("MESHKIT_RAFT_ELECTION")
    if election:
        lo, hi = (float(x) for x in election.split(","))
        t = dataclasses.replace(t, election_min=lo, election_max=hi)
    return t


def write_secret(path: Path, secret: str) -> None:
    make_private_dir(path.parent)
    write_private(path, secret)


def wipe_node(data_dir: Path) -> None:
    """Remove what a node keeps in its data dir (not agent.log)."""
    d = Path(data_dir)
    for name in (CERT_DIR, RAFT_DIR):
        shutil.rmtree(d / name, ignore_errors=True)
    for name in (NODE_FILE, PID_FILE):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Agent:
    """One node's agent. `run()` serves until stopped (SIGTERM/SIGINT or `leave`)."""

    def __init__(
        self,
        data_dir: Path,
        cfg: NodeConfig,
        identity: NodeIdentity,
        *,
        init_cluster: dict[str, Any] | None = None,
        raft_peers: list[str] | None = None,
        on_ready: Callable[[Agent], None] | None = None,
        timings: RaftTimings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.identity = identity
        self.timings = timings or raft_timings_from_env()
        self._sealer: Sealer | None = None
        self.api = Api(self)
        self.store: RaftStore | None = None
        self.liveness = cstate.Liveness(cfg.heartbeat_period, MISSED_BEATS)
        self._init_cluster = init_cluster
        self._raft_peers = raft_peers or []
        self._on_ready = on_ready
        self._local: RpcServer | None = None
        self._tcp: RpcServer | None = None
        self._server_ctx: Any = None
        self._stop = asyncio.Event()
        self._leader_api_key: tuple[int, int, str | None] = (0, -1, None)
        self._leader_api: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Future[None]] = set()
        self._clients: dict[str, RpcClient] = {}
        self._pending_beats: set[str] = set()
        self._flush_now = asyncio.Event()
        self._check_now = asyncio.Event()
        self._role_lock = asyncio.Lock()
        self._was_leader = False
        self._manager_idx = random.randrange(1 << 16)  # spread workers over the managers
        self._leaving = False
        self._rng = random.Random()
        self.period = cfg.heartbeat_period
        self._overlay_commits: dict[str, dict[str, Any]] = {}
        self.overlay = NodeOverlay(cfg.node_id, cfg.advertise_addr)
        self.mesh = NodeMesh(cfg.node_id)
        self.web: Any = None  # meshkit.web.embedded.EmbeddedWeb with `--web`
        self.dispatch = Dispatch(self)

    # -- properties ----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.cfg.node_id

    @property
    def cluster_id(self) -> str:
        return self.cfg.cluster_id

    @property
    def is_manager(self) -> bool:
        return self.store is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def executor(self) -> Any:
        """This node's task executor (meshkit.cluster.tasks.executor.Executor), once started."""
        return self.dispatch.executor

    @property
    def state(self) -> cstate.ClusterState | None:
        return None if self.store is None else self.store.state

    @property
    def api_addr(self) -> str:
        return f"{self.cfg.advertise_addr}:{self.cfg.listen_port}"

    @property
    def raft_addr(self) -> str:
        return f"{self.cfg.advertise_addr}:{self.cfg.raft_port}"

    async def wait_state(self, timeout: float = 10.0) -> None:
        """On a manager just started: wait (a little) until its replica holds the state."""
        deadline = time.monotonic() + timeout
        while self.store is None or not self.store.state.initialized:
            if self.identity.role != "manager" or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    def leader_api_addr(self) -> str | None:
        if self.store is None or self.store.state is None:
            return None
        st, leader = self.store.state, self.store.leader
        # asked on every heartbeat: scanning all nodes each time made a beat's cost grow
        # with the cluster, so the answer is kept until the state or the leader changes
        key = (id(st), st.index, leader)
        if key != self._leader_api_key:
            self._leader_api = next(
                (m.api_addr for m in st.managers() if m.raft_addr == leader), None
            )
            self._leader_api_key = key
        return self._leader_api

    def manager_status(self, node: cstate.NodeRecord) -> str:
        if node.role != "manager" or self.store is None:
            return ""
        if node.raft_addr == self.store.leader:
            return "Leader"
        if self.store.connected(node.raft_addr):
            return "Reachable"
        return "Unreachable"

    def info(self) -> dict[str, Any]:
        st = self.state
        return {
            "node_id": self.node_id,
            "role": self.identity.role,
            "cluster_id": self.cluster_id,
            "hostname": self.cfg.hostname,
            "addr": self.cfg.advertise_addr,
            "api_addr": self.api_addr,
            "managers": self.cfg.managers,
            "initialized": bool(st is not None and st.initialized)
            or self.identity.role == "worker",
            "version": __version__,
            "raft": None if self.store is None else self.store.status(),
            "overlay": self.overlay.report(),
            "overlay_nodes": self.overlay.nodes(),
            "overlay_stats": self.overlay.stats(),
            "mesh": self.mesh.report(),
            "cert_not_after": self.identity.not_after,
        }

    # -- run -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            # Everything in the data dir is the agent's alone (keys, the raft journal):
            # also repairs the modes of a data dir an older version wrote.
            await asyncio.get_running_loop().run_in_executor(None, secure_tree, self.data_dir)
            self._local = RpcServer(self.api.dispatch_local)
            await self._local.listen_unix(self.cfg.socket, 0o660)
            if self.identity.role == "manager":
                await self._start_manager(self._raft_peers)
            if self._init_cluster is not None:
                await self._bootstrap(self._init_cluster)
                self._init_cluster = None
            # every node serves task_logs to the managers, so workers listen too
            await self._listen_tcp()
            await self.dispatch.start_executor()
            self._tasks = [
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._renew_loop(), name="renew"),
                asyncio.create_task(self._manager_loop(), name="manager"),
                asyncio.create_task(self._flush_loop(), name="beats"),
                asyncio.create_task(self._lag_loop(), name="lag"),
            ]
            self._tasks += [
                asyncio.create_task(fn(), name=name) for name, fn in self.dispatch.loops()
            ]
            await self._start_web()
            if self._on_ready is not None:
                self._on_ready(self)
            log.info(
                "node %s (%s) up: %s, socket %s",
                self.node_id,
                self.identity.role,
                self.api_addr,
                self.cfg.socket,
            )
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _start_web(self) -> None:
        """The Caddyfile of `--web`, served on this loop; SIGHUP re-reads it. A Caddyfile
        broken since the node was made stops the agent with the reasons (file:line)."""
        if not self.cfg.web:
            return
        from meshkit.web.embedded import start_embedded

        self.web = await start_embedded(self.cfg.web, self.mesh)
        log.info(
            "web server: %s on port(s) %s",
            self.cfg.web,
            ", ".join(str(p) for p in self.web.ports),
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: self._spawn(self._reload_web())
            )

    async def _reload_web(self) -> None:
        if self.web is not None and await self.web.reload():
            log.info("web server: %s reloaded", self.cfg.web)

    async def _shutdown(self) -> None:
        # Python 3.11's wait_for can swallow a cancel that lands in the same loop turn as the
        # result it waited for; the loops then go on. So cancel until they have ended.
        pending = {t for t in self._tasks if not t.done()}
        for _ in range(50):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for t in pending:
            log.warning("task %s did not stop", t.get_name())
        for t in self._tasks:
            if t.done() and not t.cancelled():
                with contextlib.suppress(Exception):
                    t.result()
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()
        # Tasks keep running over an agent restart (the next agent adopts them); a node that
        # leaves the cluster stops them.
        try:
            await self.dispatch.close_executor(stop_tasks=self._leaving)
        except Exception:
            log.exception("stopping the task executor failed")
        if self.web is not None:
            try:
                await self.web.stop(2.0)
            except Exception:
                log.exception("stopping the web server failed")
            self.web = None
        try:
            await self.mesh.close()
        except Exception:
            log.exception("stopping the service mesh failed")
        # a kernel overlay forwards on while the agent restarts; leaving takes it down
        try:
            await self.overlay.close(remove=self._leaving)
        except Exception:
            log.exception("stopping the overlay failed")
        await self._stop_manager(wipe=False)
        if self._tcp is not None:
            await self._tcp.close()
            self._tcp = None
        if self._local is not None:
            await self._local.close()
        if self._leaving:
            wipe_node(self.data_dir)
            log.info("node %s left the cluster; its state is removed", self.node_id)

    async def _bootstrap(self, cluster: dict[str, Any]) -> None:
        """The first manager: wait to lead the one-member raft, then commit `init`."""
        assert self.store is not None
        deadline = time.monotonic() + 30
        while not self.store.is_leader:
            if time.monotonic() > deadline:
                raise MeshkitError("the new cluster's raft did not elect this node leader")
            await asyncio.sleep(0.05)
        now = time.time()
        node = cstate.NodeRecord(
            id=self.node_id,
            hostname=self.cfg.hostname,
            role="manager",
            addr=self.cfg.advertise_addr,
            api_port=self.cfg.listen_port,
            raft_port=self.cfg.raft_port,
            version=__version__,
            created_at=now,
            updated_at=now,
        )
        await self.store.submit(
            {"op": "init", "cluster": cluster, "node": node.to_dict(), "now": now}
        )
        self.cfg.managers = [self.api_addr]
        self.cfg.save(self.data_dir)

    # -- manager role --------------------------------------------------------------------------

    async def _start_manager(self, peers: list[str]) -> None:
        secret_path = self.data_dir / RAFT_DIR / SECRET_FILE
        try:
            secret = secret_path.read_text().strip()
        except OSError as exc:
            raise MeshkitError(f"cannot read the raft secret {secret_path}: {exc}") from None
        store = RaftStore(self.raft_addr, peers, self.data_dir / RAFT_DIR, secret, self.timings)
        store.on_applied = self._on_applied
        await store.start()
        self.store = store
        self.liveness = cstate.Liveness(self.period, MISSED_BEATS)
        self._was_leader = False
        try:
            await self._listen_tcp()
        except MeshkitError:
            store.close()
            self.store = None
            raise

    async def _listen_tcp(self) -> None:
        """The API port (mutual TLS): manager methods on managers, task logs on every node.
        It stays open over role changes."""
        if self._tcp is not None:
            return
        self._server_ctx = server_ssl_context(self.identity)
        tcp = RpcServer(self.api.dispatch_tcp)
        try:
            await tcp.listen_tcp(self.cfg.listen_host, self.cfg.listen_port, self._server_ctx)
        except OSError as exc:
            raise MeshkitError(
                f"cannot listen on {self.cfg.listen_host}:{self.cfg.listen_port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._tcp = tcp

    @property
    def sealer(self) -> Sealer:
        """Opens and seals the state's secrets with this manager's cluster data key (read
        from raft/datakey; a node without it can open only plain values)."""
        if self._sealer is None or not self._sealer.key:
            self._sealer = Sealer(load_data_key(self.data_dir / RAFT_DIR / DATA_KEY_FILE))
        return self._sealer

    async def _stop_manager(self, wipe: bool) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if wipe:
            shutil.rmtree(self.data_dir / RAFT_DIR, ignore_errors=True)

    def _on_applied(self, cmd: Any, result: dict[str, Any]) -> None:
        op = cmd.get("op")
        self.api.networks.applied(cmd)
        if op != "set_addr":
            self.api.services.applied(cmd)
            self.dispatch.applied(cmd)
        if op == "set_status" and cmd.get("left"):
            for node_id in cmd.get("statuses", {}):
                self.liveness.mark_down(node_id)
        if op in ("set_role", "leave", "remove_node") and "ok" in result:
            if result["ok"].get("node_id") == self.node_id and op == "set_role":
                asyncio.get_running_loop().call_soon(self._schedule_role_check)
            self._check_now.set()
        if op == "set_status":
            self._check_now.set()

    def _schedule_role_check(self) -> None:
        st = self.state
        if st is None:
            return
        node = st.nodes.get(self.node_id)
        if node is not None and node.role != self.identity.role:
            self._spawn(self._change_role(node.role))

    def note_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        """A node's overlay report changed: commit it (once per distinct report in flight)."""
        if self._overlay_commits.get(node_id) == overlay:
            return
        self._overlay_commits[node_id] = overlay
        self._spawn(self._commit_overlay(node_id, overlay))

    async def _commit_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        try:
            await self.api._submit({"op": "set_overlay", "node_id": node_id, "overlay": overlay})
        except Exception as exc:  # the next beat that still differs tries again
            log.debug("overlay report of %s not committed: %s", node_id, exc)
        finally:
            if self._overlay_commits.get(node_id) == overlay:
                del self._overlay_commits[node_id]

    def note_beat(self, node_id: str) -> None:
        """A heartbeat this manager took (or was told about by another manager)."""
        st = self.state
        if self.store is None or st is None:
            return
        now = time.monotonic()
        if self.store.is_leader:
            revived = self.liveness.beat(node_id, now)
            node = st.nodes.get(node_id)
            if revived or (node is not None and node.status != cstate.READY):
                self._check_now.set()
        else:
            self._pending_beats.add(node_id)
            node = st.nodes.get(node_id)
            if node is not None and node.status != cstate.READY:
                self._flush_now.set()

    async def _manager_loop(self) -> None:
        """Leader duties: statuses from the beats, raft members from the managers."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), min(0.5, self.period / 2))
            self._check_now.clear()
            store, st = self.store, self.state
            if store is None or st is None or not st.initialized:
                self._was_leader = False
                continue
            if store.is_leader and not self._was_leader:
                self.liveness = cstate.Liveness(st.heartbeat_period, MISSED_BEATS)
                self.liveness.start(time.monotonic())
                self.liveness.beat(self.node_id, time.monotonic())
                log.info("this node (%s) is now the raft leader", self.node_id)
            self._was_leader = store.is_leader
            if not store.is_leader:
                continue
            self.liveness.beat(self.node_id, time.monotonic())
            store.reconcile_members({m.raft_addr for m in st.managers()})
            changes = self.liveness.changes(
                {n.id: n.status for n in st.nodes.values()}, time.monotonic()
            )
            if changes and store.has_quorum:
                try:
                    await store.submit(
                        {"op": "set_status", "statuses": changes, "now": time.time()}
                    )
                    log.info("node status: %s", ", ".join(f"{k} {v}" for k, v in changes.items()))
                except MeshkitError as exc:
                    log.warning("cannot record node status: %s", exc)

    async def _lag_loop(self) -> None:
        """Say when the event loop was held up: every DNS answer, relay and heartbeat of this
        node waits while it is."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            before = loop.time()
            await asyncio.sleep(0.1)
            late = loop.time() - before - 0.1
            if late > 0.5:
                log.warning("the event loop was held up for %.1fs", late)

    async def _flush_loop(self) -> None:
        """Followers pass the beats they took to the leader, about once a second."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), min(1.0, self.period / 3))
            self._flush_now.clear()
            if not self._pending_beats or self.store is None or self.store.is_leader:
                if self.store is not None and self.store.is_leader:
                    for node_id in self._pending_beats:
                        self.note_beat(node_id)
                self._pending_beats.clear()
                continue
            leader = self.leader_api_addr()
            if leader is None:
                continue
            seen = sorted(self._pending_beats)
            self._pending_beats.clear()
            try:
                await self.call_manager(leader, "beats", {"seen": seen}, timeout=3)
            except RpcError as exc:
                log.debug("passing beats to %s: %s", leader, exc)
                self._pending_beats.update(seen)

    # -- talking to managers -------------------------------------------------------------------

    async def call_manager(
        self, addr: str, method: str, params: dict[str, Any], timeout: float = 5.0
    ) -> Any:
        host, port = split_addr(addr)
        return await self._call(addr, host, port, "manager", method, params, timeout)

    async def call_node(
        self, node: cstate.NodeRecord, method: str, params: dict[str, Any], timeout: float = 10.0
    ) -> Any:
        """Call a method every node serves (task_logs) on `node`, with this node's certificate."""
        if node.id == self.node_id:
            peer = Peer(identity=self.identity.peer, address="self")
            return await self.api.dispatch_tcp(peer, method, params)
        key = f"node:{node.api_addr}"  # apart from the manager clients: no role expected
        return await self._call(key, node.addr, node.api_port, None, method, params, timeout)

    async def _call(
        self,
        key: str,
        host: str,
        port: int,
        role: str | None,
        method: str,
        params: dict[str, Any],
        timeout: float,
    ) -> Any:
        """One call over a kept mutual-TLS connection (made on first use, dropped when the
        peer is unreachable or times out)."""
        client = self._clients.get(key)
        if client is None or client.closed:
            ctx = client_ssl_context(self.identity, self.identity.ca_pem)
            client = await RpcClient.connect_tcp(
                host, port, ctx, timeout, expect_role=role, expect_cluster=self.cluster_id
            )
            other = self._clients.get(key)
            if other is not None and not other.closed:  # another call connected meanwhile
                await client.close()
                client = other
            else:
                self._clients[key] = client
        try:
            return await client.call(method, params, timeout)
        except RpcError as exc:
            if exc.code in ("unreachable", "timeout"):
                self._clients.pop(key, None)
                await client.close()
            raise

    async def submit_task_status(self, updates: list[dict[str, Any]]) -> None:
        await self.dispatch.submit_task_status(updates)

    def _manager_targets(self) -> list[str]:
        """Managers to try, in order: the leader first when known, then the rest rotated."""
        managers = [m for m in self.cfg.managers if m != self.api_addr or not self.is_manager]
        if self.store is not None and self.state is not None:
            managers = [m.api_addr for m in self.state.managers() if m.id != self.node_id]
        if not managers:
            return []
        i = self._manager_idx % len(managers)
        ordered = managers[i:] + managers[:i]
        leader = self.leader_api_addr()
        if leader in ordered and leader != self.api_addr:
            ordered.remove(leader)
            ordered.insert(0, leader)
        return ordered

    async def _ask_managers(self, method: str, params: dict[str, Any]) -> Any:
        errors = []
        for addr in self._manager_targets():
            try:
                return await self.call_manager(addr, method, params)
            except RpcError as exc:
                errors.append(f"{addr}: {exc.message}")
                if exc.code not in ("unreachable", "timeout", "unavailable", "not_manager"):
                    raise
                self._manager_idx += 1
        raise RpcError("unreachable", "no manager answered: " + "; ".join(errors or ["none known"]))

    # -- heartbeats ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                reply = await self._beat()
            except RpcError as exc:
                # every manager was tried already: wait for the next beat
                log.warning("heartbeat failed: %s", exc.message)
                await asyncio.sleep(self.period)
                continue
            except Exception:
                log.exception("heartbeat failed")
                await asyncio.sleep(self.period)
                continue
            if reply is not None:
                self._take_reply(reply)
            await asyncio.sleep(self.period)

    async def _beat(self) -> dict[str, Any] | None:
        status: dict[str, Any] = {"version": __version__, "overlay": self.overlay.report()}
        params = {"node_id": self.node_id, "status": status}
        if self.is_manager and (self.store is not None and self.store.is_leader):
            peer = Peer(identity=self.identity.peer, address="self")
            return dict(await self.api.heartbeat(peer, params))
        if self.is_manager and not self._manager_targets():
            self.note_beat(self.node_id)
            return None
        try:
            return dict(await self._ask_managers("heartbeat", params))
        except RpcError:
            if self.is_manager:  # no other manager answers: count our own beat locally
                self.note_beat(self.node_id)
            raise

    def _take_reply(self, reply: dict[str, Any]) -> None:
        period = float(reply.get("period") or self.period)
        managers = [str(m) for m in reply.get("managers") or []]
        changed = False
        if period != self.period:
            self.period = period
            self.cfg.heartbeat_period = period
            changed = True
        if managers and managers != self.cfg.managers:
            self.cfg.managers = managers
            changed = True
        if changed:
            self.cfg.save(self.data_dir)
        role = reply.get("role")
        if role in cstate.ROLES and role != self.identity.role:
            self._spawn(self._change_role(str(role)))

    # -- certificates and roles ----------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while not self._stop.is_set():
            renew_at = self.identity.renew_at(self._rng)
            while time.time() < renew_at:
                await asyncio.sleep(min(5.0, max(0.05, renew_at - time.time())))
            try:
                async with self._role_lock:
                    await self._renew()
            except (RpcError, MeshkitError) as exc:
                log.warning("certificate renewal failed: %s; retrying", exc)
                await asyncio.sleep(min(5.0, self.period))

    async def _renew(self) -> dict[str, Any]:
        """A new certificate for this node, with the role the cluster state says."""
        key_pem, csr_pem = new_node_key_and_csr(self.node_id)
        params = {"node_id": self.node_id, "csr": csr_pem.decode()}
        reply: dict[str, Any]
        if self.store is not None and (self.store.is_leader or not self._manager_targets()):
            peer = Peer(identity=self.identity.peer, address="self")
            reply = dict(await self.api.renew(peer, params))
        else:
            reply = dict(await self._ask_managers("renew", params))
        identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, reply["ca"].encode())
        if identity.node_id != self.node_id or identity.cluster_id != self.cluster_id:
            raise MeshkitError("the renewed certificate names another node or cluster")
        identity.save(self.data_dir / CERT_DIR)
        self.identity = identity
        if self._server_ctx is not None:
            from meshkit.cluster.rpc import pki

            pki.reload_identity(self._server_ctx, identity)
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()
        log.info(
            "certificate renewed (%s), valid until %s",
            identity.role,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(identity.not_after)),
        )
        return reply

    async def _change_role(self, role: str) -> None:
        async with self._role_lock:
            if role == self.identity.role and (role == "manager") == self.is_manager:
                return
            log.info("role change: %s -> %s", self.identity.role, role)
            if role == "worker":
                await self._hand_over_leadership()
            try:
                reply = await self._renew()
            except (RpcError, MeshkitError) as exc:
                log.warning("role change to %s: renewal failed: %s", role, exc)
                return
            new_role = self.identity.role
            if new_role == "manager" and self.store is None:
                # A new raft member starts empty: the leader sends it the log or a snapshot.
                shutil.rmtree(self.data_dir / RAFT_DIR, ignore_errors=True)
                write_secret(self.data_dir / RAFT_DIR / SECRET_FILE, str(reply["raft_secret"]))
                if reply.get("data_key"):
                    save_data_key(self.data_dir / RAFT_DIR / DATA_KEY_FILE, reply["data_key"])
                self._sealer = None
                await self._start_manager([str(p) for p in reply.get("raft_peers") or []])
            elif new_role == "worker" and self.store is not None:
                await self._stop_manager(wipe=True)
                self._sealer = None
            self.cfg.role = new_role
            self.cfg.save(self.data_dir)
            log.info("this node is now a %s", new_role)

    async def _hand_over_leadership(self, timeout: float = 5.0) -> None:
        """A leader about to stop being a manager first makes another manager leader."""
        deadline = time.monotonic() + timeout
        while self.store is not None and self.store.is_leader and time.monotonic() < deadline:
            st = self.state
            others = set() if st is None else {m.raft_addr for m in st.managers()}
            others.discard(self.raft_addr)
            if not others:
                return
            self.store.reconcile_members(others)
            await asyncio.sleep(0.2)

    # -- leaving -------------------------------------------------------------------------------

    async def leave(self, force: bool) -> dict[str, Any]:
        if self.identity.role == "worker" or self.store is None:
            try:
                await self._ask_managers("leave", {"node_id": self.node_id})
            except RpcError as exc:
                if not force:
                    raise RpcError(
                        "unavailable",
                        f"cannot tell the managers that this node leaves: {exc.message}; "
                        "use --force to leave anyway",
                    ) from None
        else:
            st = self.state
            managers = [] if st is None else st.managers()
            others = [m for m in managers if m.id != self.node_id]
            if not others and not force:
                raise RpcError(
                    "conflict",
                    "You are attempting to leave the swarm on a node that is participating "
                    "as a manager. Removing the last manager erases all current state of the "
                    "swarm. Use `--force` to ignore this message.",
                )
            if others:
                try:
                    await self.store.submit(
                        {"op": "leave", "node_id": self.node_id, "force": force, "now": time.time()}
                    )
                except MeshkitError as exc:
                    if not force:
                        raise RpcError("unavailable", f"cannot leave: {exc}") from None
                # Let the leader take this node out of raft (it hands over leadership first).
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and self.store is not None:
                    if self.store.is_leader:
                        self.store.reconcile_members({m.raft_addr for m in others})
                    if len(self.store.members) <= 1:
                        break
                    await asyncio.sleep(0.1)
        self._leaving = True
        asyncio.get_running_loop().call_later(0.2, self.stop)
        return {"left": True, "node_id": self.node_id}


# -- building a node -------------------------------------------------------------------------


def default_advertise_addr(listen_host: str) -> str:
    """The advertise address when none is given: the listen IP, else the source address of
    the route towards the outside (no packet is sent)."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return listen_host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route, sends nothing
            return str(s.getsockname()[0])
        except OSError:
            raise MeshkitError(
                "could not choose an IP address to advertise (no default route): "
                "use --advertise-addr"
            ) from None


def check_data_dir_free(data_dir: Path) -> None:
    if (Path(data_dir) / NODE_FILE).exists():
        raise MeshkitError(
            f"This node is already part of a cluster (data dir {data_dir}). Start its agent "
            f"with `meshkit node run --data-dir {data_dir}`, or leave the cluster first with "
            "`meshkit node leave`."
        )


def prepare_data_dir(data_dir: Path) -> None:
    make_private_dir(Path(data_dir))


@dataclass
class NodeOptions:
    """What `node init` / `node join` were told (flags already checked)."""

    data_dir: Path
    socket: str = DEFAULT_SOCKET
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    raft_port: int | None = None
    advertise_addr: str = ""
    hostname: str = ""
    web: str = ""

    @property
    def effective_raft_port(self) -> int:
        return self.raft_port if self.raft_port else self.listen_port + 1

    @property
    def effective_hostname(self) -> str:
        return self.hostname or socket.gethostname()


def init_node(
    opts: NodeOptions,
    *,
    default_addr_pool: list[str],
    mask_length: int,
    data_path_port: int,
    heartbeat_period: float,
    cert_lifetime: float,
) -> tuple[NodeConfig, NodeIdentity, dict[str, Any]]:
    """Make the cluster's CA, secrets and the first manager's identity in the data dir.

    node.json is written only once the agent has committed the `init` command, so a failed
    start leaves a data dir that `init` may use again.
    """
    from meshkit.cluster.api.nodes import new_node_id
    from meshkit.cluster.rpc.pki import ClusterCA
    from meshkit.cluster.rpc.tokens import new_raft_secret, new_secret

    check_data_dir_free(opts.data_dir)
    prepare_data_dir(opts.data_dir)
    wipe_node(opts.data_dir)
    advertise = opts.advertise_addr or default_advertise_addr(opts.listen_host)
    cluster_id = new_node_id()
    node_id = new_node_id()
    ca = ClusterCA.create(cluster_id)
    identity = ca.issue_identity(node_id, "manager", cert_lifetime)
    identity.save(opts.data_dir / CERT_DIR)
    raft_secret = new_raft_secret()
    write_secret(opts.data_dir / RAFT_DIR / SECRET_FILE, raft_secret)
    data_key = new_data_key()
    save_data_key(opts.data_dir / RAFT_DIR / DATA_KEY_FILE, data_key)
    cluster = cstate.ClusterState(
        cluster_id=cluster_id,
        created_at=time.time(),
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=ca.key_pem.decode(),
        worker_secret=new_secret(),
        manager_secret=new_secret(),
        raft_secret=raft_secret,
        default_addr_pool=default_addr_pool,
        default_addr_pool_mask_length=mask_length,
        data_path_port=data_path_port,
        heartbeat_period=heartbeat_period,
        cert_lifetime=cert_lifetime,
    ).to_dict()
    del cluster["nodes"]
    # The journal's first entry is this dict: its secrets go in sealed (see sealing.py).
    Sealer(data_key).seal_fields(cluster)
    cfg = NodeConfig(
        node_id=node_id,
        cluster_id=cluster_id,
        role="manager",
        hostname=opts.effective_hostname,
        advertise_addr=advertise,
        listen_host=opts.listen_host,
        listen_port=opts.listen_port,
        raft_port=opts.effective_raft_port,
        socket=opts.socket,
        managers=[f"{advertise}:{opts.listen_port}"],
        heartbeat_period=heartbeat_period,
        web=opts.web,
    )
    return cfg, identity, cluster


async def join_node(
    opts: NodeOptions, token_text: str, manager: tuple[str, int], attempts: int = 5
) -> tuple[NodeConfig, NodeIdentity, list[str]]:
    """Join through `manager`: check its CA against the token, send a CSR, keep the result."""
    from meshkit.cluster.rpc.tokens import parse_token
    from meshkit.cluster.rpc.transport import check_ca_bundle, fetch_ca_bundle

    check_data_dir_free(opts.data_dir)
    token = parse_token(token_text)
    host, port = manager
    bundle = b""
    for attempt in range(attempts):
        try:
            bundle = await fetch_ca_bundle(host, port, timeout=5.0)
            break
        except RpcError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1.0)
    check_ca_bundle(bundle, token)
    key_pem, csr_pem = new_node_key_and_csr("pending")
    listen_host = opts.listen_host
    advertise = opts.advertise_addr
    if not advertise and listen_host not in ("", "0.0.0.0", "::"):
        advertise = listen_host
    ctx = client_ssl_context(None, bundle)
    client = await RpcClient.connect_tcp(host, port, ctx, 10.0, expect_role="manager")
    try:
        reply = await client.call(
            "join",
            {
                "token": token_text.strip(),
                "csr": csr_pem.decode(),
                "hostname": opts.effective_hostname,
                "advertise_addr": advertise,
                "version": __version__,
                "api_port": opts.listen_port,
                "raft_port": opts.effective_raft_port,
            },
            timeout=20.0,
        )
    finally:
        await client.close()
    identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, bundle)
    prepare_data_dir(opts.data_dir)
    wipe_node(opts.data_dir)
    identity.save(opts.data_dir / CERT_DIR)
    peers: list[str] = []
    if identity.role == "manager":
        write_secret(opts.data_dir / RAFT_DIR / SECRET_FILE, str(reply["raft_secret"]))
        if reply.get("data_key"):
            save_data_key(opts.data_dir / RAFT_DIR / DATA_KEY_FILE, str(reply["data_key"]))
        peers = [str(p) for p in reply.get("raft_peers") or []]
    cfg = NodeConfig(
        node_id=identity.node_id,
        cluster_id=identity.cluster_id,
        role=identity.role,
        hostname=opts.effective_hostname,
        advertise_addr=str(reply.get("addr") or advertise),
        listen_host=listen_host,
        listen_port=opts.listen_port,
        raft_port=opts.effective_raft_port,
        socket=opts.socket,
        managers=[str(m) for m in reply.get("managers") or []],
        heartbeat_period=float(reply.get("period") or 5.0),
        web=opts.web,
    )
    cfg.save(opts.data_dir)
    return cfg, identity, peers


def load_node(data_dir: Path) -> tuple[NodeConfig, NodeIdentity]:
    cfg = NodeConfig.load(data_dir)
    identity = NodeIdentity.load(Path(data_dir) / CERT_DIR)
    return cfg, identity
