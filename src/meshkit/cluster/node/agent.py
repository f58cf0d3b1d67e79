"""The node agent: one process, one uvloop loop, everything a node does for the cluster.

On every node the agent serves the local API on a Unix socket (default
/run/meshkit/meshkit.sock, mode 0660) and the API port with mutual TLS (default 0.0.0.0:2377:
manager methods on managers, task logs on every node), beats (heartbeat.py), renews its
certificate (renewal.py) and runs the service loops (service_loops.py). On a manager it also
runs the raft replica of the cluster state on the advertise address and the raft port (the API
port + 1 unless ``--raft-port`` says otherwise; roles.py) and, while it leads, turns beats into
node statuses (membership.py).

`Agent` builds those parts, wires them together, and is the `NodeContext` (meshkit.cluster.api
.context) the API and the loops see. The data dir is described in config.py. An agent started
again on the same data dir (`meshkit node run`) is the same node: a manager replays its raft
journal. `meshkit node leave` stops the agent and wipes the node from the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit import __version__
from meshkit.base.errors import MeshkitError
from meshkit.base.files import secure_tree
from meshkit.cluster.api.nodes import Api
from meshkit.cluster.model import opgate
from meshkit.cluster.model import state as cstate
from meshkit.cluster.node.config import NodeConfig, raft_timings_from_env, wipe_node
from meshkit.cluster.node.heartbeat import Heartbeat
from meshkit.cluster.node.leave import leave_cluster
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.node.membership import Membership
from meshkit.cluster.node.renewal import Renewal
from meshkit.cluster.node.roles import Roles
from meshkit.cluster.node.service_loops import ServiceLoops
from meshkit.cluster.node.web import NodeWeb
from meshkit.cluster.raft.etcd_store import EtcdStore
from meshkit.cluster.raft.sealing import Sealer
from meshkit.cluster.raft.store import RAFT_OPS, RaftStore, RaftTimings
from meshkit.cluster.rpc import pki
from meshkit.cluster.rpc.pki import NodeIdentity, server_ssl_context
from meshkit.cluster.rpc.transport import Peer, RpcError, RpcServer
from meshkit.mesh.node import NodeMesh
from meshkit.net.gateway import NodeGateway, gateway_wanted
from meshkit.net.overlay import NodeOverlay

if TYPE_CHECKING:
    from meshkit.cluster.tasks.executor import Executor

log = logging.getLogger(__name__)


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
        self._data_dir = Path(data_dir)
        self.cfg = cfg
        self._identity = identity
        self._init_cluster = init_cluster
        self._raft_peers = raft_peers or []
        self._on_ready = on_ready
        self._local: RpcServer | None = None
        self._tcp: RpcServer | None = None
        self._server_ctx: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Future[None]] = set()
        self._leaving = False
        self._overlay = NodeOverlay(
            cfg.node_id,
            cfg.advertise_addr,
            gateway=NodeGateway(self._data_dir) if gateway_wanted(cfg.advertise_addr) else None,
        )
        self._mesh = NodeMesh(cfg.node_id)
        # the parts, each in its own module; they reach the node through NodeContext
        self.api = Api(self)
        self.managers = ManagerClient(identity, self._manager_directory)
        self.renewal = Renewal(self, cfg, self.managers, self._use_identity)
        self.roles = Roles(
            self,
            cfg,
            self.renewal,
            timings or raft_timings_from_env(),
            on_applied=self._on_applied,
            on_started=self._manager_started,
            spawn=self._spawn,
        )
        self.membership = Membership(self, cfg, self.roles, self.managers, self._spawn)
        self.heartbeat = Heartbeat(
            self, cfg, self.managers, lambda role: self._spawn(self.roles.change_role(role))
        )
        self.heartbeat.on_ca = self.renewal.want  # a CA rotation asks for a renewal
        self.loops = ServiceLoops(self)
        self.web = NodeWeb(cfg.web, self._mesh, self)

    # -- NodeContext ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.cfg.node_id

    @property
    def cluster_id(self) -> str:
        return self.cfg.cluster_id

    @property
    def hostname(self) -> str:
        return self.cfg.hostname

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def identity(self) -> NodeIdentity:
        return self._identity

    @property
    def api_addr(self) -> str:
        return f"{self.cfg.advertise_addr}:{self.cfg.listen_port}"

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def store(self) -> RaftStore | EtcdStore | None:
        return self.roles.store

    @property
    def is_manager(self) -> bool:
        return self.roles.store is not None

    @property
    def is_leader(self) -> bool:
        return self.roles.store is not None and self.roles.store.is_leader

    @property
    def has_quorum(self) -> bool:
        return self.roles.store is not None and self.roles.store.has_quorum

    @property
    def state(self) -> cstate.ClusterState | None:
        store = self.roles.store
        return None if store is None else store.state

    @property
    def sealer(self) -> Sealer:
        return self.roles.sealer

    @property
    def executor(self) -> Executor | None:
        return self.loops.executor

    @property
    def overlay(self) -> NodeOverlay:
        return self._overlay

    @property
    def mesh(self) -> NodeMesh:
        return self._mesh

    async def wait_state(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.roles.store is None or not self.roles.store.state.initialized:
            if self._identity.role != "manager" or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        store = self.roles.store
        if store is None:
            raise RpcError("not_manager", cstate.NOT_A_MANAGER)
        cmd.setdefault("now", time.time())
        return await store.submit(cmd)

    def raft_status(self) -> dict[str, Any]:
        store = self.roles.store
        if store is None:
            raise RpcError("not_manager", cstate.NOT_A_MANAGER)
        return store.status()

    def leader_api_addr(self) -> str | None:
        return self.roles.leader_api_addr()

    def manager_status(self, node: cstate.NodeRecord) -> str:
        return self.roles.manager_status(node)

    async def call_self(self, method: str, params: dict[str, Any]) -> Any:
        return await self.api.call_as(self._own_peer(), method, params)

    async def ask_managers(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Any:
        return await self.managers.ask(method, params, timeout)

    async def call_node(
        self, node: cstate.NodeRecord, method: str, params: dict[str, Any], timeout: float = 10.0
    ) -> Any:
        if node.id == self.node_id:
            return await self.api.dispatch_tcp(self._own_peer(), method, params)
        return await self.managers.call_node(node.addr, node.api_port, method, params, timeout)

    def note_beat(self, node_id: str) -> None:
        self.membership.note_beat(node_id)

    def note_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        self.membership.note_overlay(node_id, overlay)

    async def submit_task_status(self, updates: list[dict[str, Any]]) -> None:
        await self.loops.submit_task_status(updates)

    def info(self) -> dict[str, Any]:
        st = self.state
        store = self.roles.store
        return {
            "node_id": self.node_id,
            "role": self._identity.role,
            "cluster_id": self.cluster_id,
            "hostname": self.cfg.hostname,
            "addr": self.cfg.advertise_addr,
            "api_addr": self.api_addr,
            "managers": self.cfg.managers,
            "initialized": bool(st is not None and st.initialized)
            or self._identity.role == "worker",
            "version": __version__,
            "raft": None if store is None else store.status(),
            # each manager's raft entry kinds (RAFT_OPS): batches go out once all have them
            "raft_ops": None if st is None else {m.id: m.raft_ops for m in st.managers()},
            "overlay": self._overlay.report(),
            "overlay_nodes": self._overlay.nodes(),
            "overlay_stats": self._overlay.stats(),
            "mesh": self._mesh.report(),
            "cert_not_after": self._identity.not_after,
            # the secrets this node holds (its live tasks' tmpfs): name -> task ids
            "secrets": {} if self.executor is None else self.executor.secrets_held(),
        }

    async def leave(self, force: bool) -> dict[str, Any]:
        await leave_cluster(self, self.roles, self.managers, force)
        self._leaving = True
        asyncio.get_running_loop().call_later(0.2, self.stop)
        return {"left": True, "node_id": self.node_id}

    # -- wiring --------------------------------------------------------------------------------

    def _own_peer(self) -> Peer:
        return Peer(identity=self._identity.peer, address="self")

    def _manager_directory(self) -> tuple[list[str], str | None]:
        """For the ManagerClient: the other managers (from the state on a manager, else from
        node.json) and the leader's API address."""
        # never this node itself: as a worker its own API refuses (its certificate says worker),
        # and as a manager whose replica is still catching up its state may be stale
        managers = [m for m in self.cfg.managers if m != self.api_addr]
        st = self.state
        if st is not None:
            managers = [m.api_addr for m in st.managers() if m.id != self.node_id]
        leader = self.roles.leader_api_addr()
        return managers, None if leader == self.api_addr else leader

    async def _use_identity(self, identity: NodeIdentity) -> None:
        """A renewed certificate: serve and call with it from now on."""
        self._identity = identity
        if self._server_ctx is not None:
            pki.reload_identity(self._server_ctx, identity)
        await self.managers.use_identity(identity)

    async def _manager_started(self) -> None:
        self.membership.reset()
        await self._listen_tcp()
        self._spawn(announce_raft_ops(self))

    async def _netkeys_loop(self) -> None:
        """The leader's keys of encrypted networks (meshkit.cluster.node.netkeys)."""
        from meshkit.cluster.node import netkeys

        await netkeys.leader_loop(self, self.api.networks.keys_due, lambda: self.stopping)

    def _on_applied(self, cmd: Any, result: dict[str, Any]) -> None:
        """Every command the replica applies, fanned out to the parts that follow the state."""
        op = cmd.get("op")
        self.api.events.record(cmd, result, self.state)
        self.api.networks.applied(cmd)
        self.api.certs.applied(cmd)
        if op != "set_addr":
            self.api.services.applied(cmd)
            self.loops.applied(cmd)
        if op == "set_status" and cmd.get("left"):
            for node_id in cmd.get("statuses", {}):
                self.membership.liveness.mark_down(node_id)
        if op in ("set_role", "leave", "remove_node") and "ok" in result:
            if result["ok"].get("node_id") == self.node_id and op == "set_role":
                asyncio.get_running_loop().call_soon(self.roles.check_own_role)
            self.membership.check_all()
        if op == "set_status":
            self.membership.check_nodes(cmd.get("statuses") or ())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- run -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

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
            if self._identity.role == "manager":
                await self.roles.start_manager(self._raft_peers)
            if self._init_cluster is not None:
                await self.roles.bootstrap(self._init_cluster)
                self._init_cluster = None
            # every node serves task_logs to the managers, so workers listen too
            await self._listen_tcp()
            await self.loops.start_executor()
            parts: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
                ("heartbeat", self.heartbeat.loop),
                ("renew", self.renewal.loop),
                ("manager", self.membership.leader_loop),
                ("beats", self.membership.flush_loop),
                ("lag", self._lag_loop),
                ("netkeys", self._netkeys_loop),
                ("runs", self.api.runs.reap_loop),  # `meshkit run`s left by a stopped agent
            ]
            self._tasks = [asyncio.create_task(fn(), name=name) for name, fn in parts]
            self._tasks += [asyncio.create_task(fn(), name=name) for name, fn in self.loops.loops()]
            await self.web.start(self._spawn)
            if self._on_ready is not None:
                self._on_ready(self)
            log.info(
                "node %s (%s) up: %s, socket %s",
                self.node_id,
                self._identity.role,
                self.api_addr,
                self.cfg.socket,
            )
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _listen_tcp(self) -> None:
        """The API port (mutual TLS): manager methods on managers, task logs on every node.
        It stays open over role changes."""
        if self._tcp is not None:
            return
        self._server_ctx = server_ssl_context(self._identity)
        tcp = RpcServer(self.api.dispatch_tcp)
        try:
            await tcp.listen_tcp(self.cfg.listen_host, self.cfg.listen_port, self._server_ctx)
        except OSError as exc:
            raise MeshkitError(
                f"cannot listen on {self.cfg.listen_host}:{self.cfg.listen_port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._tcp = tcp

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
        await self.managers.close()
        # Tasks keep running over an agent restart (the next agent adopts them); a node that
        # leaves the cluster stops them.
        try:
            await self.loops.close_executor(stop_tasks=self._leaving)
        except Exception:
            log.exception("stopping the task executor failed")
        await self.web.stop()
        try:
            await self._mesh.close()
        except Exception:
            log.exception("stopping the service mesh failed")
        # a kernel overlay forwards on while the agent restarts; leaving takes it down
        try:
            await self._overlay.close(remove=self._leaving)
        except Exception:
            log.exception("stopping the overlay failed")
        await self.roles.stop_manager(wipe=False)
        if self._tcp is not None:
            await self._tcp.close()
            self._tcp = None
        if self._local is not None:
            await self._local.close()
        if self._leaving:
            wipe_node(self.data_dir)
            log.info("node %s left the cluster; its state is removed", self.node_id)


ANNOUNCE_RETRY = 2.0
"""Seconds between a manager's tries at recording its RAFT_OPS (no quorum yet, a leader
change)."""


async def announce_raft_ops(node: Agent) -> None:
    """Record in this manager's node record the commands and raft entry kinds its build
    applies (meshkit.cluster.model.opgate, meshkit.cluster.raft.store.RAFT_OPS), once per
    start: the leader batches writes, and commits commands newer than the gate's baseline,
    only while every manager has."""
    wanted = opgate.announced_ops(cstate.COMMANDS, RAFT_OPS)
    while not node.stopping and node.is_manager:
        st = node.state
        record = st.nodes.get(node.node_id) if st is not None else None
        if record is not None and record.raft_ops == wanted:
            return
        if record is not None:
            try:
                await node.submit({"op": "set_raft_ops", "node_id": node.node_id, "ops": wanted})
                continue
            except (MeshkitError, RpcError) as exc:
                log.debug("recording this manager's raft entry kinds: %s", exc)
        await asyncio.sleep(ANNOUNCE_RETRY)
