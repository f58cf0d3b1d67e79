"""The node methods of the API, the dispatch of every method, and who may call which.

Transport: framed JSON RPC (`meshkit.cluster.rpc.transport`) on the manager port (TLS, default 2377,
node certificates from the cluster CA) and on the agent's local Unix socket (default
/run/meshkit/meshkit.sock, mode 0660: its file mode is the local authorization).

Authorization on the TCP port, by method:

- none (no client certificate needed; a joining node has none yet):

    ca_bundle  {}  -> {"bundle": pem}
    join       {"token", "csr", "hostname", "advertise_addr", "version",
                "api_port"?, "raft_port"?}
               -> {"node_id", "role", "addr" (as recorded), "cert", "ca", "cluster_id",
                   "managers": ["ip:port"], "period",
                   "raft_secret" and "raft_peers": ["ip:raftport"] (managers only)}
               The token's secret decides the role (constant-time compare with both); a
               wrong, rotated-away or foreign token is refused before anything is written.

- any node certificate of this cluster (worker or manager):

    heartbeat  {"node_id", "status"?: {"version", "overlay"?}}  -> {"period", "managers",
               "leader", "role", "availability", "ca"? (during a CA rotation)}   the
               certificate's CN must equal node_id; a changed overlay report is committed
               (set_overlay) in the background
    renew      {"node_id", "csr"} -> {"cert", "ca", "role", "managers", "raft_secret"?,
               "raft_peers"?}    a new certificate with the role the cluster state says
    leave      {"node_id"} -> {}   a worker leaving: marked Down at once

- a manager certificate only (a worker's is refused with code "forbidden"):

    node_ls       {}                                   -> {"self", "nodes": [node view]}
    node_inspect  {"node"}                             -> node view
    node_update   {"node", "availability"?, "label_add"?: {k: v}, "label_rm"?: [k]}
                                                       -> {"node_id"}
    node_promote  {"node"} / node_demote {"node"}      -> {"node_id", "changed"}
    node_rm       {"node", "force"}                    -> {"node_id"}
    join_token    {"role", "rotate"}                   -> {"role", "token", "addr"}
    beats         {"seen": [node_id]}                  -> {}   (managers pass on the beats
                                                               they took to the leader)
    cluster_status {}                                  -> raft status of the answering manager
    service_*     see meshkit.cluster.api.services
    network_*, overlay_pairs, netmap_watch   see meshkit.cluster.api.networks
    cluster_inspect, cluster_update, unlock_key, node_ps, events
                  see meshkit.cluster.api.cluster
    secret_*, config_*, task_secrets         see meshkit.cluster.api.secrets (task_secrets:
                  any node certificate, only for a task assigned to that node)
    webcert_*     the --web nodes' certificates: see meshkit.cluster.api.certs
    ca_status, ca_rotate (managers), ca_ack (any node)   `cluster ca [--rotate]`: see
                  meshkit.cluster.api.carotation

Services and tasks (meshkit.cluster.api.services): the service_* methods are manager methods;
tasks_watch and task_report take any node certificate whose CN is the node asked about;
task_logs is served by every node (workers too) to managers only.

On the local Unix socket every manager method above is open (on a worker they fail with
code "not_manager" and swarm's "This node is not a swarm manager..." text), plus:

    info   {}            -> {"node_id", "role", "cluster_id", "hostname", "addr", "api_addr",
                             "managers", "initialized", "version", "raft", "overlay",
                             "overlay_nodes", "overlay_stats", "mesh", "cert_not_after",
                             "secrets": {name: [task id]} (what this node holds)}
    volume_ls {}         -> {"volumes": [{"Driver", "Name", "Mountpoint", "UsedBy"}]}
    volume_rm {"name"}   -> {"name"}   refused (conflict) while a task here uses it
    leave  {"force"}     -> {"left": true, "node_id"}   this node leaves the cluster; the agent
                             stops and removes its certificate and state from the data dir
    mesh_watch {"service", "version"?, "wait"?}
                         -> {"version", "known", "netns", "backends": [ip], "agent_pid"}
                             a long poll for `meshkit ingress --service` (meshkit.mesh.node)

Parameters: every method's are checked against its schema in `meshkit.cluster.api.params` before
its handler runs (after the authorization check); a missing or bad one is refused with code
bad_request and a message naming it, e.g. ``invalid join parameter api_port: 1000000 is not
a port (1-65535)``.

Error codes (RpcError.code): unauthenticated, forbidden, not_manager, not_found,
bad_request, conflict, no_quorum, unknown_outcome (raft took a write it could not confirm: it
may or may not have been applied), token, unavailable, locked (plus rpc's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import meshkit.cluster.api.cluster as cluster_api
from meshkit.base.errors import FlagError
from meshkit.cluster.api import carotation as ca_api
from meshkit.cluster.api.certs import NODE_CERT_METHODS, CertMethods
from meshkit.cluster.api.common import caller, loaded_state, new_node_id, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.api.networks import (
    NETWORK_METHODS,
    NODE_NET_METHODS,
    NetworkMethods,
    pair_rows,
)
from meshkit.cluster.api.params import ParamError, check_params, printable
from meshkit.cluster.api.resources import ResourceCommits
from meshkit.cluster.api.runs import RUN_LOCAL_METHODS, RunMethods
from meshkit.cluster.api.secrets import NODE_SECRET_METHODS, SECRET_METHODS, SecretMethods
from meshkit.cluster.api.services import (
    NODE_SERVED_METHODS,
    NODE_TASK_METHODS,
    SERVICE_METHODS,
    ServiceMethods,
)
from meshkit.cluster.api.volumes import VOLUME_METHODS, volume_call
from meshkit.cluster.model import carotation
from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft import autolock
from meshkit.cluster.raft.sealing import SealError
from meshkit.cluster.raft.store import NoQuorum, StoreError, UnknownOutcome
from meshkit.cluster.rpc.pki import ClusterCA, PkiError
from meshkit.cluster.rpc.tokens import (
    TokenError,
    ca_digest,
    format_token,
    new_secret,
    parse_token,
    token_matches,
)
from meshkit.cluster.rpc.transport import Peer, RpcError
from meshkit.net.doctor_report import overlay_column

log = logging.getLogger(__name__)

_signer: ThreadPoolExecutor | None = None  # made at the first join


async def sign_off_loop(ca: Any, csr: bytes, node_id: str, role: str, lifetime: float) -> bytes:
    """`ca.sign_csr` in a thread of its own: loading, checking and signing a CSR is 0.3 ms of
    CPU per join or renewal that the manager's loop need not pay (5,000 joins: 1.5 s). Not in
    the TLS handshake pool: its threads are niced, and signing holds the GIL, so a signing
    thread the scheduler preempted would hold the loop up (a priority inversion); this one
    runs at the manager's own priority."""
    global _signer
    if _signer is None:
        _signer = ThreadPoolExecutor(1, thread_name_prefix="csr-sign")
    return await asyncio.get_running_loop().run_in_executor(
        _signer, ca.sign_csr, csr, node_id, role, lifetime
    )


UNAUTHENTICATED = frozenset({"ca_bundle", "join"})
NODE_METHODS = (
    frozenset({"heartbeat", "renew", "leave"})
    | NODE_TASK_METHODS
    | NODE_NET_METHODS
    | NODE_SECRET_METHODS
    | NODE_CERT_METHODS
    | ca_api.CA_NODE_METHODS
)
MANAGER_METHODS = (
    frozenset(
        {
            "node_ls",
            "node_inspect",
            "node_update",
            "node_promote",
            "node_demote",
            "node_rm",
            "join_token",
            "beats",
            "cluster_status",
        }
    )
    | SERVICE_METHODS
    | NETWORK_METHODS
    | SECRET_METHODS
    | cluster_api.CLUSTER_METHODS
    | ca_api.CA_MANAGER_METHODS
)
LOCAL_METHODS = frozenset({"info", "leave", "mesh_watch"}) | RUN_LOCAL_METHODS


def join_key(request_id: str, csr_pem: bytes) -> str:
    """What a join's request id is kept as in the state: a digest of it and the CSR's key."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_csr(csr_pem).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(request_id.encode() + b"\0" + der).hexdigest()


def _translate(exc: Exception) -> RpcError:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, ParamError):
        return RpcError("bad_request", str(exc))
    if isinstance(exc, UnknownOutcome):
        return RpcError("unknown_outcome", str(exc))
    if isinstance(exc, NoQuorum):
        return RpcError("no_quorum", str(exc))
    if isinstance(exc, cstate.NodeNotFound):
        return RpcError("not_found", str(exc))
    if isinstance(exc, cstate.CommandError):
        return RpcError("conflict", str(exc))
    if isinstance(exc, StoreError):
        return RpcError("unavailable", str(exc))
    if isinstance(exc, TokenError):
        return RpcError("token", str(exc))
    if isinstance(exc, PkiError):
        return RpcError("bad_request", str(exc))
    from meshkit.cluster.model.services import SpecError

    if isinstance(exc, (SpecError, FlagError)):
        return RpcError("bad_request", str(exc))
    raise exc


def etcd_url_of(node: NodeContext) -> dict[str, str]:
    """{"store_url": URL} when the cluster's log is in etcd: a new manager must reach the same
    etcd (the URL only; TLS files are the joining host's own, --store-cacert/-cert/-key)."""
    with contextlib.suppress(RpcError):
        status = node.raft_status()
        if status.get("store") == "etcd":
            return {"store_url": str(status.get("store_url") or "")}
    return {}


class _JoinTokens:
    """The current manager and worker tokens, unsealed once per change of the secrets (or the
    CA) instead of twice per join."""

    def __init__(self) -> None:
        self._key: tuple[str, str, str] = ("", "", "")
        self._tokens: tuple[str, str] = ("", "")

    def get(
        self, st: cstate.ClusterState, digest: str, unseal: Callable[[str], str]
    ) -> tuple[str, str]:
        key = (digest, st.manager_secret, st.worker_secret)
        if self._key != key:
            self._tokens = (
                format_token(digest, unseal(st.manager_secret)),
                format_token(digest, unseal(st.worker_secret)),
            )
            self._key = key
        return self._tokens


class Api:
    """Every method of one node's API: the node methods here, the service and network methods
    in their areas; `dispatch_tcp` and `dispatch_local` check who may call what."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self._ca: tuple[str, ClusterCA] | None = None
        # Every heartbeat reply carries the manager list; rebuilding it from all nodes on each
        # beat made a beat cost grow with the cluster, so it is kept until a command changes a
        # manager (ClusterState.manager_changes; keyed on the state's index it was rebuilt,
        # O(nodes), after every join and task report).
        self._managers_key: tuple[int, int, int] = (0, 0, -1)
        self._managers_list: list[str] = []
        self._tokens = _JoinTokens()
        self.resources = ResourceCommits(node)
        self.services = ServiceMethods(node)
        self._handlers: dict[str, Callable[[Peer, dict[str, Any]], Awaitable[Any]]] = {
            "ca_bundle": self.ca_bundle,
            "join": self.join,
            "heartbeat": self.heartbeat,
            "renew": self.renew,
            "node_ls": self.node_ls,
            "node_inspect": self.node_inspect,
            "node_update": self.node_update,
            "node_promote": self.node_promote,
            "node_demote": self.node_demote,
            "node_rm": self.node_rm,
            "join_token": self.join_token,
            "beats": self.beats,
            "cluster_status": self.cluster_status,
        }
        for name in SERVICE_METHODS | NODE_TASK_METHODS | NODE_SERVED_METHODS:
            self._handlers[name] = getattr(self.services, name)
        self.networks = NetworkMethods(node)
        for name in NETWORK_METHODS | NODE_NET_METHODS:
            self._handlers[name] = getattr(self.networks, name)
        self.cluster = cluster_api.ClusterMethods(node)
        for name in cluster_api.CLUSTER_METHODS:
            self._handlers[name] = getattr(self.cluster, name)
        self.events = self.cluster.events_log  # the agent records every applied command
        self.secrets = SecretMethods(node)
        self.runs = RunMethods(node)  # `meshkit run` (meshkit.cluster.api.runs)
        for name in SECRET_METHODS | NODE_SECRET_METHODS:
            self._handlers[name] = getattr(self.secrets, name)
        self.certs = CertMethods(node)  # webcert_*: the --web nodes' certificates
        for name in NODE_CERT_METHODS:
            self._handlers[name] = getattr(self.certs, name)
        self.carotation = ca_api.CaRotationMethods(node)  # `cluster ca --rotate`
        for name in ca_api.CA_MANAGER_METHODS | ca_api.CA_NODE_METHODS:
            self._handlers[name] = getattr(self.carotation, name)

    # -- dispatch ------------------------------------------------------------------------------

    async def call_as(self, peer: Peer, method: str, params: dict[str, Any]) -> Any:
        """`method`'s handler, with no authorization or parameter check: for the node calling
        its own API."""
        return await self._handlers[method](peer, params)

    async def dispatch_tcp(self, peer: Peer, method: str, params: dict[str, Any]) -> Any:
        handler = self._handlers.get(method)
        if method == "leave":
            handler = self.node_leave
        if handler is None:
            raise RpcError("bad_request", f"unknown method {method!r}")
        if method not in UNAUTHENTICATED:
            ident = peer.identity
            if ident is None or ident.cluster_id != self.node.cluster_id:
                raise RpcError(
                    "unauthenticated",
                    f"{method} needs a node certificate of this cluster "
                    f"(from {peer.address}: {'none' if ident is None else 'another cluster'})",
                )
            if (method in MANAGER_METHODS or method in NODE_SERVED_METHODS) and not (
                ident.is_manager
            ):
                raise RpcError(
                    "forbidden",
                    f"{method} is for managers only: node {ident.node_id} presented a "
                    f"{ident.role} certificate",
                )
        try:
            check_params(method, params)
        except ParamError as exc:
            log.info("refused %s from %s: %s", method, peer.address, exc)
            raise _translate(exc) from None
        if method in NODE_SERVED_METHODS:  # every node serves these, workers too
            try:
                return await handler(peer, params)
            except Exception as exc:
                raise _translate(exc) from None
        if self.node.is_manager:
            # A manager whose raft store is still loading: wait a little. Without a store
            # (a worker, or a manager between roles: the API port stays open over role
            # changes) answer at once, so that the caller moves on to another manager
            # instead of missing its heartbeats here.
            await self.node.wait_state()
        if not self.node.is_manager:
            raise RpcError("not_manager", cstate.NOT_A_MANAGER)
        if method in MANAGER_METHODS and peer.identity is not None:
            # A demoted manager's certificate is still valid until it is renewed: the state
            # has the last word.
            caller = self.state.nodes.get(peer.identity.node_id)
            if caller is None or caller.role != "manager":
                raise RpcError(
                    "forbidden",
                    f"{method} is for managers only: node {peer.identity.node_id} is not a "
                    "manager of this cluster any more",
                )
        try:
            return await handler(peer, params)
        except Exception as exc:
            raise _translate(exc) from None

    async def dispatch_local(self, peer: Peer, method: str, params: dict[str, Any]) -> Any:
        if not peer.local:
            raise RpcError("forbidden", "local methods only on the agent's Unix socket")
        try:
            check_params(method, params, local=True)
            locked = autolock.node_gate(self.node.data_dir).locked
            if method == "info":
                return {**self.node.info(), "locked": locked}
            if method == "unlock":
                return self.cluster.unlock(params)
            if locked:
                raise RpcError("locked", autolock.LOCKED_TEXT)
            if method == "leave":
                return await self.node.leave(bool(params.get("force")))
            if method == "mesh_watch":
                return await self.node.mesh.watch(
                    str(params.get("service") or ""),
                    params.get("version"),
                    min(60.0, float(params.get("wait") or 20.0)),  # checked: a number
                )
            if method in NODE_SERVED_METHODS:
                return await self._handlers[method](peer, params)
            if method in RUN_LOCAL_METHODS:
                return await self.runs.call(method, params)
            if method in VOLUME_METHODS:  # this node's own volumes
                return await volume_call(self.node, method, params)
            if method in MANAGER_METHODS or method == "join_token":
                await self.node.wait_state()
                if not self.node.is_manager:
                    raise RpcError("not_manager", cstate.NOT_A_MANAGER)
                return await self._handlers[method](peer, params)
        except Exception as exc:
            raise _translate(exc) from None
        raise RpcError("bad_request", f"unknown method {method!r}")

    # -- helpers -------------------------------------------------------------------------------

    @property
    def state(self) -> cstate.ClusterState:
        return loaded_state(self.node)

    def ca(self) -> ClusterCA:
        st = self.state
        if self._ca is None or self._ca[0] != st.ca_key_pem:
            key_pem = self.unseal(st.ca_key_pem)
            self._ca = (
                st.ca_key_pem,
                ClusterCA.from_pem(st.ca_cert_pem.encode(), key_pem.encode()),
            )
        return self._ca[1]

    def unseal(self, value: str) -> str:
        """A secret of the state in clear (they are kept sealed: see sealing.py)."""
        try:
            return self.node.sealer.open(value)
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None

    def _manager_secrets(self, st: cstate.ClusterState) -> dict[str, Any]:
        """What a manager needs to take part in raft and read the state's secrets."""
        return {
            "raft_secret": self.unseal(st.raft_secret),
            "raft_peers": [m.raft_addr for m in st.managers()],
            "data_key": self.node.sealer.key,
            **etcd_url_of(self.node),
        }

    def digest(self) -> str:
        return ca_digest(self.state.ca_cert_pem.encode())

    def _node_ref(self, peer: Peer, params: dict[str, Any]) -> cstate.NodeRecord:
        ref = str_param(params, "node")
        if ref == "self":
            ref = (
                self.node.node_id if peer.local or peer.identity is None else peer.identity.node_id
            )
        return cstate.resolve_node(self.state, ref)

    def _managers(self) -> list[str]:
        st = self.state
        key = (id(st), id(st.nodes), st.manager_changes)
        if key != self._managers_key:
            self._managers_list = [m.api_addr for m in st.managers()]
            self._managers_key = key
        return self._managers_list

    # -- unauthenticated ----------------------------------------------------------------------

    async def ca_bundle(self, peer: Peer, params: dict[str, Any]) -> Any:
        return {"bundle": self.state.ca_cert_pem}

    async def join(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = self.state
        text = str_param(params, "token")
        token = parse_token(text)
        digest = self.digest()
        if not secrets.compare_digest(token.digest, digest):
            other = (
                "invalid join token: its CA digest does not match this cluster's CA "
                "(the token belongs to another cluster)"
            )
            raise RpcError("token", ca_api.retired_text(st, token.digest) or other)
        # Both comparisons always run: the time taken does not say which one matched.
        manager_token, worker_token = self._tokens.get(st, digest, self.unseal)
        as_manager = token_matches(text, manager_token)
        as_worker = token_matches(text, worker_token)
        if not (as_manager or as_worker):
            raise RpcError(
                "token",
                "invalid join token: it is not a current token of this cluster "
                "(it may have been rotated); ask a manager for "
                "`meshkit node join-token worker` or `manager`",
            )
        role = "manager" if as_manager else "worker"
        csr = str_param(params, "csr").encode()
        addr = str_param(params, "advertise_addr", required=False)
        if not addr:
            addr = peer.address.rsplit(":", 1)[0].strip("[]")
        node_id = new_node_id()
        cert = await sign_off_loop(self.ca(), csr, node_id, role, st.cert_lifetime)  # checks it
        now = time.time()
        record = cstate.NodeRecord(
            id=node_id,
            hostname=str_param(params, "hostname", required=False) or node_id[:12],
            role=role,
            addr=addr,
            api_port=int(params.get("api_port") or 2377),  # checked: a port (params.py)
            raft_port=int(params.get("raft_port") or 2378),
            version=str_param(params, "version", required=False) or "unknown",
            created_at=now,
            updated_at=now,
        )
        cmd: dict[str, Any] = {"op": "add_node", "node": record.to_dict(), "now": now}
        request_id = str_param(params, "request_id", required=False)
        if request_id:
            # A join whose outcome was unknown (the raft leader changed under it) is sent
            # again with the same request id and CSR: the state answers with the node the
            # first one made. The key binds the id to the CSR's key, so knowing another
            # node's request id alone gets nothing.
            cmd["request_id"] = join_key(request_id, csr)
        done = await self.node.submit(cmd)
        if done.get("node_id") and done["node_id"] != node_id:
            node_id = str(done["node_id"])
            cert = await sign_off_loop(self.ca(), csr, node_id, role, st.cert_lifetime)
        self.node.note_beat(node_id)
        log.info("node %s (%s, %s) joined as a %s", node_id, printable(record.hostname), addr, role)
        result: dict[str, Any] = {
            "node_id": node_id,
            "role": role,
            "addr": addr,
            "cert": cert.decode() + carotation.chain_extra(st),
            "ca": carotation.bundle(st),
            "cluster_id": st.cluster_id,
            "managers": self._managers(),
            "period": st.heartbeat_period,
        }
        if role == "manager":
            result.update(self._manager_secrets(st))
        return result

    # -- any node ------------------------------------------------------------------------------

    async def heartbeat(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        self.node.note_beat(node.id)
        status = params.get("status")
        overlay = status.get("overlay") if isinstance(status, dict) else None
        if isinstance(overlay, dict) and overlay != node.overlay:
            self.node.note_overlay(node.id, overlay)
        resources = status.get("resources") if isinstance(status, dict) else None
        if isinstance(resources, dict) and resources != node.resources:
            self.resources.commit(node.id, resources)
        st = self.state
        return {
            "period": st.heartbeat_period,
            "managers": self._managers(),
            "leader": self.node.leader_api_addr(),
            "role": node.role,
            "availability": node.availability,
            **ca_api.beat_extra(st),
        }

    async def renew(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        st = self.state
        cert = await sign_off_loop(
            self.ca(), str_param(params, "csr").encode(), node.id, node.role, st.cert_lifetime
        )
        result: dict[str, Any] = {
            "cert": cert.decode() + carotation.chain_extra(st),
            "ca": carotation.bundle(st),
            "role": node.role,
            "managers": self._managers(),
            "period": st.heartbeat_period,
        }
        if node.role == "manager":
            result.update(self._manager_secrets(st))
        return result

    async def node_leave(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        if node.role == "manager":
            raise RpcError("forbidden", "a manager leaves through its own agent")
        await self.node.submit(
            {"op": "set_status", "statuses": {node.id: cstate.DOWN}, "left": True}
        )
        return {}

    # -- managers ------------------------------------------------------------------------------

    async def node_ls(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = self.state
        nodes = sorted(st.nodes.values(), key=lambda n: (n.hostname, n.id))
        self_id = self.node.node_id if peer.local else ""
        views = []
        pairs = pair_rows(st) if st.networks else []
        for n in nodes:
            view = cstate.node_view(n, self_id=self_id, manager_status=self.node.manager_status(n))
            view["Overlay"] = overlay_column(n.id, pairs) if pairs else "-"
            broken = (n.overlay or {}).get("errors") or {}
            if broken:
                names = sorted(st.networks.get(k, {}).get("name", k) for k in broken)
                view["Overlay"] = f"cannot build {', '.join(names)} (see meshkit doctor)"
            views.append(view)
        return {"self": self_id, "nodes": views}

    async def node_inspect(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = self._node_ref(peer, params)
        self_id = self.node.node_id if peer.local else ""
        return cstate.node_view(
            node, self_id=self_id, manager_status=self.node.manager_status(node)
        )

    async def node_update(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = self._node_ref(peer, params)
        cmd: dict[str, Any] = {"op": "update_node", "node_id": node.id}
        if params.get("availability"):
            cmd["availability"] = str_param(params, "availability")
        if params.get("label_add"):
            cmd["label_add"] = dict(params["label_add"])
        if params.get("label_rm"):
            cmd["label_rm"] = list(params["label_rm"])
        return await self.node.submit(cmd)

    async def node_promote(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = self._node_ref(peer, params)
        return await self.node.submit({"op": "set_role", "node_id": node.id, "role": "manager"})

    async def node_demote(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = self._node_ref(peer, params)
        return await self.node.submit({"op": "set_role", "node_id": node.id, "role": "worker"})

    async def node_rm(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = self._node_ref(peer, params)
        return await self.node.submit(
            {"op": "remove_node", "node_id": node.id, "force": bool(params.get("force"))}
        )

    async def join_token(self, peer: Peer, params: dict[str, Any]) -> Any:
        role = str_param(params, "role")
        if role not in cstate.ROLES:
            raise RpcError("bad_request", f"unknown role {role!r}: expected worker or manager")
        if params.get("rotate"):
            try:  # the journal keeps the command: the new secret goes in sealed
                sealed = self.node.sealer.seal(new_secret())
            except SealError as exc:
                raise RpcError("unavailable", str(exc)) from None
            await self.node.submit({"op": "rotate_token", "role": role, "secret": sealed})
        st = self.state
        return {
            "role": role,
            "token": format_token(self.digest(), self.unseal(st.secret_for(role))),
            "addr": self.node.api_addr,
        }

    async def beats(self, peer: Peer, params: dict[str, Any]) -> Any:
        seen = params.get("seen") or []
        if not isinstance(seen, list):
            raise RpcError("bad_request", "seen must be a list of node ids")
        for node_id in seen:
            if isinstance(node_id, str):
                self.node.note_beat(node_id)
        return {}

    async def cluster_status(self, peer: Peer, params: dict[str, Any]) -> Any:
        return self.node.raft_status()
