"""Making a node: `node init` (a new cluster), `node join` (through a manager), `node run`
(the node a data dir holds). Each returns what the agent starts from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshkit import __version__
from meshkit.base.errors import MeshkitError
from meshkit.base.files import make_private_dir
from meshkit.cluster.model import state as cstate
from meshkit.cluster.node.config import (
    CERT_DIR,
    DEFAULT_PORT,
    NODE_FILE,
    RAFT_DIR,
    SECRET_FILE,
    NodeConfig,
    wipe_node,
    write_secret,
)
from meshkit.cluster.raft import autolock
from meshkit.cluster.raft.sealing import DATA_KEY_FILE, Sealer, new_data_key, save_data_key
from meshkit.cluster.rpc.local import DEFAULT_SOCKET
from meshkit.cluster.rpc.pki import NodeIdentity, client_ssl_context, new_node_key_and_csr
from meshkit.cluster.rpc.transport import Peer, RpcClient, RpcError, RpcServer

log = logging.getLogger(__name__)


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
    unlock_key: str = "",
    task_history_limit: int = 5,
) -> tuple[NodeConfig, NodeIdentity, dict[str, Any]]:
    """Make the cluster's CA, secrets and the first manager's identity in the data dir (with
    `unlock_key`: autolock on, the raft secret and the data key kept locked with it).

    node.json is written only once the agent has committed the `init` command, so a failed
    start leaves a data dir that `init` may use again.
    """
    from meshkit.cluster.api.common import new_node_id
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
    data_key = new_data_key()
    raft_dir = opts.data_dir / RAFT_DIR
    write_secret(raft_dir / SECRET_FILE, raft_secret)
    save_data_key(raft_dir / DATA_KEY_FILE, data_key)
    if unlock_key:
        autolock.relock(raft_dir, None, unlock_key)
        autolock.gate_for(raft_dir).key = unlock_key  # this process runs the new manager
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
        task_history_limit=task_history_limit,
        autolock=bool(unlock_key),
        unlock_key=unlock_key,
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


JOIN_RETRY_CODES = ("unknown_outcome", "unavailable", "no_quorum", "timeout", "unreachable")
"""Join failures worth another try with the same request id: the write may not have been
made, or was made and its answer lost (an election under load); the retry cannot join twice."""


async def join_call(
    host: str, port: int, ctx: Any, params: dict[str, Any], attempts: int
) -> dict[str, Any]:
    """The ``join`` call, tried again (after 1, 2, 3... s) when its outcome is unknown."""
    for attempt in range(attempts):
        try:
            client = await RpcClient.connect_tcp(host, port, ctx, 10.0, expect_role="manager")
            try:
                return dict(await client.call("join", params, timeout=20.0))
            finally:
                await client.close()
        except RpcError as exc:
            if exc.code not in JOIN_RETRY_CODES or attempt == attempts - 1:
                raise
            log.warning("join: %s; trying again (%d of %d)", exc.message, attempt + 2, attempts)
            await asyncio.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


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
    params = {
        "token": token_text.strip(),
        "csr": csr_pem.decode(),
        "hostname": opts.effective_hostname,
        "advertise_addr": advertise,
        "version": __version__,
        "api_port": opts.listen_port,
        "raft_port": opts.effective_raft_port,
        # the same id (and CSR) on every try: a join whose outcome was unknown, sent again,
        # gets the node the first one made, never a second one
        "request_id": secrets.token_hex(16),
    }
    reply = await join_call(host, port, ctx, params, attempts)
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
    store_url = str(reply.get("store_url") or "") if identity.role == "manager" else ""
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
    if store_url:  # the cluster keeps its log in etcd: so does this manager (no TLS files yet)
        cfg.store = {"url": store_url}
    cfg.save(opts.data_dir)
    return cfg, identity, peers


def force_new_cluster(
    data_dir: Path, unlock_key: str | None = None
) -> tuple[NodeConfig, NodeIdentity, dict[str, Any]]:
    """A single-manager cluster from the state in a manager's data dir (quorum lost for good).

    The state is read from the raft files (meshkit.cluster.raft.recovery), which are then set
    aside; the agent starts a one-member raft and commits `force_new_cluster` with that state
    (meshkit.cluster.model.clusterops). The node keeps its id, addresses, certificate, raft
    secret and data key; the cluster keeps its id, CA, tokens, services, networks and secrets.
    """
    from meshkit.cluster.raft import recovery

    cfg, identity = load_node(data_dir, unlock_key)
    if cfg.role != "manager" or identity.role != "manager":
        raise MeshkitError(
            f"{data_dir} holds a worker: --force-new-cluster needs the data dir of a manager "
            "(it holds the cluster state)"
        )
    raft_dir = Path(data_dir) / RAFT_DIR
    state, applied = recovery.read_state(raft_dir)
    if state.cluster_id != cfg.cluster_id or cfg.node_id not in state.nodes:
        raise MeshkitError(
            f"the raft state in {raft_dir} is not that of this node's cluster "
            f"({cfg.cluster_id}) or does not hold this node"
        )
    recovery.set_aside(raft_dir)
    # A new raft secret: a former manager started again from its old data dir cannot reach
    # this raft (its higher term would make the new leader step down, again and again).
    # Written in clear even when autolock is on (there is no unlock key here): the manager
    # locks it again once it is unlocked (Roles.sync_lock).
    from meshkit.cluster.rpc.tokens import new_raft_secret

    raft_secret = new_raft_secret()
    write_secret(raft_dir / SECRET_FILE, raft_secret)
    (raft_dir / (SECRET_FILE + autolock.SUFFIX)).unlink(missing_ok=True)
    cfg.managers = [f"{cfg.advertise_addr}:{cfg.listen_port}"]
    cfg.save(data_dir)
    first = {"force_new_cluster": state.to_dict(), "raft_secret": raft_secret}
    return cfg, identity, {**first, "journal_commands": applied}


def load_node(data_dir: Path, unlock_key: str | None = None) -> tuple[NodeConfig, NodeIdentity]:
    """The node a data dir holds; a manager whose TLS key autolock keeps locked needs
    `unlock_key` (else MeshkitError saying so)."""
    from meshkit.cluster.rpc.pki import NODE_CA_FILE, NODE_CERT_FILE, NODE_KEY_FILE

    cfg = NodeConfig.load(data_dir)
    certs = Path(data_dir) / CERT_DIR
    if not autolock.node_key_locked(Path(data_dir)):
        return cfg, NodeIdentity.load(certs)
    if not unlock_key:
        raise MeshkitError(autolock.LOCKED_TEXT)
    key_pem = autolock.read_file(certs / NODE_KEY_FILE, unlock_key).encode() + b"\n"
    try:
        cert, ca = (certs / NODE_CERT_FILE).read_bytes(), (certs / NODE_CA_FILE).read_bytes()
    except OSError as exc:
        raise MeshkitError(f"cannot read the node certificate in {certs}: {exc}") from None
    return cfg, NodeIdentity.from_cert(cert, key_pem, ca)


class LockedStart:
    """`node run` of a manager whose TLS key autolock keeps locked: until `meshkit node
    unlock` brings the key, serve the local socket alone (`info` says locked, `unlock` checks
    the key, anything else answers "locked"), then load the identity and run the agent."""

    def __init__(
        self, data_dir: Path, cfg: NodeConfig, make_agent: Callable[[NodeIdentity], Any]
    ) -> None:
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.node_id = cfg.node_id
        self._make_agent = make_agent
        self._gate = autolock.node_gate(self.data_dir)

    async def _dispatch(self, peer: Peer, method: str, params: dict[str, Any]) -> Any:
        if not peer.local:
            raise RpcError("forbidden", "local methods only on the agent's Unix socket")
        if method == "info":
            return {"node_id": self.node_id, "role": "manager", "cluster_id": self.cfg.cluster_id,
                    "initialized": False, "locked": self._gate.locked}  # fmt: skip
        if method == "unlock" and self._gate.locked:
            try:
                self._gate.unlock(str(params.get("key") or ""))
            except autolock.LockError as exc:
                raise RpcError("locked", str(exc)) from None
            return {"unlocked": True}
        raise RpcError("locked", autolock.LOCKED_TEXT)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        server = RpcServer(self._dispatch)
        await server.listen_unix(self.cfg.socket, 0o660)
        log.warning("%s (data dir %s)", autolock.LOCKED_TEXT, self.data_dir)
        waiter = asyncio.ensure_future(self._gate.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await server.close()
        if not waiter.done():
            waiter.cancel()
            return
        log.info("manager unlocked")
        _, identity = load_node(self.data_dir, waiter.result())
        await self._make_agent(identity).run()
