"""node.json (`NodeConfig`) and the layout of a node's data dir.

Data dir (default /var/lib/meshkit, mode 0700):

    node.json        who this node is: node id, cluster id, role, hostname, addresses and
                     ports, the local socket, the managers it knows (API addresses)
    certs/           node.crt, node.key (0600), ca-bundle.crt: the node's identity
    raft/            managers only: journal, dump (raft snapshot), peers.json, secret,
                     datakey (the cluster data key the state's secrets are sealed with)
    agent.pid        with --detach: the agent's pid
    agent.log        with --detach: its log

Every file in it is 0600 and every directory 0700 (`meshkit.base.files`); the agent repairs
the modes when it starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.base.files import make_private_dir, write_private
from meshkit.cluster.raft.store import RaftTimings
from meshkit.cluster.rpc.local import DEFAULT_SOCKET

DEFAULT_DATA_DIR = "/var/lib/meshkit"
DEFAULT_PORT = 2377
NODE_FILE = "node.json"
CERT_DIR = "certs"
RAFT_DIR = "raft"
PID_FILE = "agent.pid"
SECRET_FILE = "secret"


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
    store: dict[str, Any] = field(default_factory=dict)  # `--store etcd://`: etcd_spec.StoreSpec

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
    """`host:port` (the host possibly in brackets) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
