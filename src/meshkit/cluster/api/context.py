"""`NodeContext`: what the API's methods and the node's service loops use of the node they run on.

The agent (meshkit.cluster.node.agent) implements it. The API and the loops depend on this
protocol, not on the agent, so that neither imports the other and each can be read (and tested)
against a small surface.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshkit.cluster.model.state import ClusterState, NodeRecord
    from meshkit.cluster.raft.sealing import Sealer
    from meshkit.cluster.rpc.pki import NodeIdentity
    from meshkit.cluster.tasks.executor import Executor
    from meshkit.mesh.node import NodeMesh
    from meshkit.net.overlay import NodeOverlay


class NodeContext(Protocol):
    """One node, as its API methods and service loops see it."""

    # -- who and where -------------------------------------------------------------------------

    @property
    def node_id(self) -> str: ...

    @property
    def cluster_id(self) -> str: ...

    @property
    def hostname(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def api_addr(self) -> str:
        """advertise address:API port, as other nodes reach this node."""
        ...

    @property
    def identity(self) -> NodeIdentity:
        """This node's current certificate (replaced by renewals and role changes)."""
        ...

    @property
    def stopping(self) -> bool: ...

    # -- the replicated state ------------------------------------------------------------------

    @property
    def is_manager(self) -> bool:
        """True while this node runs a raft replica (between role changes it may not)."""
        ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def has_quorum(self) -> bool: ...

    @property
    def state(self) -> ClusterState | None:
        """The replica's state on a manager, None on a worker."""
        ...

    @property
    def sealer(self) -> Sealer:
        """Opens and seals the state's secrets with the cluster data key."""
        ...

    async def wait_state(self, timeout: float = 10.0) -> None:
        """On a manager just started: wait (a little) until its replica holds the state."""
        ...

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Commit one raft command (`now` added when missing); RpcError not_manager on a node
        without a replica, NoQuorum / StoreError as raft says."""
        ...

    def raft_status(self) -> dict[str, Any]:
        """The raft status of this manager (RpcError not_manager elsewhere)."""
        ...

    def leader_api_addr(self) -> str | None: ...

    def manager_status(self, node: NodeRecord) -> str:
        """Leader, Reachable, Unreachable or "" (a worker), as `node ls` shows it."""
        ...

    # -- talking to other nodes ----------------------------------------------------------------

    async def call_self(self, method: str, params: dict[str, Any]) -> Any:
        """This node's own API method, called as this node (no connection, no checks)."""
        ...

    async def ask_managers(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Any:
        """Call a manager with the one failover rule (meshkit.cluster.node.managers)."""
        ...

    async def call_node(
        self, node: NodeRecord, method: str, params: dict[str, Any], timeout: float = 10.0
    ) -> Any:
        """A method every node serves (task_logs), on `node`, with this node's certificate."""
        ...

    # -- what the API reports to the node ------------------------------------------------------

    def note_beat(self, node_id: str) -> None:
        """A heartbeat this manager took (or was told about by another manager)."""
        ...

    def note_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        """A node's overlay report changed: commit it."""
        ...

    async def submit_task_status(self, updates: list[dict[str, Any]]) -> None:
        """Commit task reports of nodes, batched with those of other nodes."""
        ...

    # -- this node's parts ---------------------------------------------------------------------

    @property
    def executor(self) -> Executor | None: ...

    @property
    def overlay(self) -> NodeOverlay: ...

    @property
    def mesh(self) -> NodeMesh: ...

    def info(self) -> dict[str, Any]:
        """What `info` on the local socket answers."""
        ...

    async def leave(self, force: bool) -> dict[str, Any]:
        """This node leaves the cluster; the agent stops soon after answering."""
        ...
