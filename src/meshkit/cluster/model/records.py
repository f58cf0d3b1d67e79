"""The records of the replicated cluster state: nodes, the state itself, and their checks.

Kept apart from the commands (meshkit.cluster.model.state) so that the services and networks
rules can name these types without importing the module that applies commands to them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from meshkit.base.errors import MeshkitError

ROLES = ("worker", "manager")
AVAILABILITIES = ("active", "pause", "drain")
READY = "ready"
DOWN = "down"

# Docker's node ids: 25 lower-case base-36 characters.
NODE_ID_RE = re.compile(r"^[0-9a-z]{25}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")

NOT_A_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
    "state. Please run this command on a manager node or promote the current node to a manager."
)


class CommandError(MeshkitError):
    """A command that the state refuses; the same on every replica."""


class NodeNotFound(CommandError):
    pass


@dataclass
class NodeRecord:
    id: str
    hostname: str
    role: str
    addr: str
    api_port: int = 2377
    raft_port: int = 2378
    availability: str = "active"
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    status: str = READY
    created_at: float = 0.0
    updated_at: float = 0.0
    overlay: dict[str, Any] = field(default_factory=dict)  # the node's last overlay report
    # what the node offers tasks, from its heartbeat: {"NanoCPUs", "MemoryBytes"} ({}: unknown)
    resources: dict[str, int] = field(default_factory=dict)
    # the raft entry kinds a manager's build applies beyond single commands (set_raft_ops;
    # meshkit.cluster.raft.store.RAFT_OPS): [] for a build that never said, which is how an
    # older build's manager looks, so the leader sends it nothing it would not know
    raft_ops: list[str] = field(default_factory=list)

    @property
    def api_addr(self) -> str:
        return f"{self.addr}:{self.api_port}"

    @property
    def raft_addr(self) -> str:
        return f"{self.addr}:{self.raft_port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owned: bool = False) -> NodeRecord:
        """`owned`: `data` is the caller's to give away (freshly unpickled), not copied."""
        names = _NODE_NAMES
        take = _own if owned else copy.deepcopy
        rec = cls(**{k: take(v) for k, v in data.items() if k in names})
        check_node(rec)
        return rec


@dataclass
class ClusterState:
    cluster_id: str = ""
    created_at: float = 0.0
    ca_cert_pem: str = ""
    ca_key_pem: str = ""
    worker_secret: str = ""
    manager_secret: str = ""
    raft_secret: str = ""
    default_addr_pool: list[str] = field(default_factory=list)
    default_addr_pool_mask_length: int = 24
    data_path_port: int = 4789
    heartbeat_period: float = 5.0
    cert_lifetime: float = 90 * 86400.0
    # `cluster update` settings (meshkit.cluster.model.clusterops); unlock_key is sealed
    task_history_limit: int = 5
    autolock: bool = False
    unlock_key: str = ""
    encryption_key_rotation: float = 12 * 3600.0
    # `cluster ca --rotate` in progress, keys sealed (meshkit.cluster.model.carotation)
    ca_rotation: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # each node's gateway bridge subnet (meshkit_gwbr), carved from the address pools like an
    # overlay subnet so that the two never overlap: node id -> CIDR
    gateway_subnets: dict[str, str] = field(default_factory=dict)
    # secrets (values sealed) and configs by id (meshkit.cluster.model.secrets)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the --web nodes' certificates, ACME accounts, order leases, challenges (model.certs)
    webcerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # joins that carried a request id: its key (a digest of the id and the CSR's key) -> the
    # node it made, so that a join retried after an unknown outcome cannot make a second node
    join_requests: dict[str, str] = field(default_factory=dict)
    index: int = 0
    # tasks_write commands that created, assigned or removed a task: which node holds which
    # task changes only then (the API's per-node task index is rebuilt when this moves)
    placements: int = 0
    # commands that added, removed, re-addressed or re-roled a manager: the manager list every
    # heartbeat reply carries is rebuilt (O(nodes)) only when this moves
    manager_changes: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = {k: v.to_dict() for k, v in self.nodes.items()}
        return data

    def dump_dict(self) -> dict[str, Any]:
        """`to_dict()`'s value without its copies: the state's own containers, for a pickle
        (the raft dump) made while nothing changes them (in a forked child, or at once).
        `asdict()` rebuilds every task, service and node (and the nodes twice): at 5,000
        nodes with a task each that was 450 ms of a dump's 560 ms of CPU; pickling walks
        the same containers anyway and writes the same bytes a copy would."""
        data = {name: getattr(self, name) for name in _STATE_FIELDS}
        data["nodes"] = {
            k: {name: getattr(v, name) for name in _NODE_FIELDS} for k, v in self.nodes.items()
        }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owned: bool = False) -> ClusterState:
        """The state of a `to_dict()` value, copied (commands keep theirs); `owned`: the
        caller gives `data` away (a raft dump just unpickled): taken as it is, which at
        5,000 nodes with a task each is 12 ms instead of 190 ms of copies."""
        names = _STATE_NAMES
        take = _own if owned else copy.deepcopy
        state = cls(**{k: take(v) for k, v in data.items() if k in names})
        state.nodes = {k: NodeRecord.from_dict(v, owned) for k, v in data.get("nodes", {}).items()}
        return state

    @property
    def initialized(self) -> bool:
        return bool(self.cluster_id)

    def managers(self) -> list[NodeRecord]:
        return sorted((n for n in self.nodes.values() if n.role == "manager"), key=lambda n: n.id)

    def secret_for(self, role: str) -> str:
        return self.manager_secret if role == "manager" else self.worker_secret


_STATE_FIELDS = tuple(f.name for f in fields(ClusterState))
_NODE_FIELDS = tuple(f.name for f in fields(NodeRecord))
_STATE_NAMES = frozenset(_STATE_FIELDS) - {"nodes"}
_NODE_NAMES = frozenset(_NODE_FIELDS)


def _own(value: Any) -> Any:
    return value


def check_node(rec: NodeRecord) -> None:
    if rec.role not in ROLES:
        raise CommandError(f"invalid role {rec.role!r}: expected worker or manager")
    if rec.availability not in AVAILABILITIES:
        raise CommandError(
            f"invalid availability {rec.availability!r}: expected active, pause or drain"
        )
    if not rec.id:
        raise CommandError("a node needs an id")


def check_label_key(key: str) -> None:
    if not _LABEL_KEY_RE.match(key):
        raise CommandError(
            f"invalid label key {key!r}: letters, digits, '.', '_', '/' and '-', "
            "starting and ending with a letter or digit"
        )


def parse_label(text: str) -> tuple[str, str]:
    """K=V (or K alone, an empty value) as `node update --label-add` takes it."""
    key, _, value = text.partition("=")
    check_label_key(key)
    return key, value
