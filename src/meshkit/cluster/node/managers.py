"""`ManagerClient`: this node's calls to managers (and to other nodes), over kept mutual-TLS
connections, with the one failover rule every caller uses.

The failover rule (`ask`): managers are tried in order, the leader first when known, then the
others from a rotating start (so that workers spread over the managers); a call moves on to the
next manager only when the error says that this manager cannot answer now (FAILOVER_CODES), and
every such move turns the rotation on, so the next call starts elsewhere; any other error is the
answer and is raised at once. When every manager failed, RpcError("unreachable", "no manager
answered: addr: why; ...").

Connections are made on first use and dropped when the peer is unreachable or a call times out.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from meshkit.cluster.node.config import split_addr
from meshkit.cluster.rpc.pki import NodeIdentity, client_ssl_context
from meshkit.cluster.rpc.transport import RpcClient, RpcError

FAILOVER_CODES = frozenset(
    {"unreachable", "timeout", "unavailable", "not_manager", "untrusted", "no_quorum"}
)
"""Errors after which another manager may answer: this one is gone, slow, still loading, no
longer a manager (by the state, or by its certificate: a demoted manager, or this node itself
in a list from its manager days), or cut off from the raft majority."""

Directory = Callable[[], tuple[list[str], str | None]]
"""The managers to call (API addresses, this node left out) and the leader's, if known."""


class ManagerClient:
    """Calls from this node to managers and other nodes, with this node's certificate."""

    def __init__(self, identity: NodeIdentity, directory: Directory) -> None:
        self.identity = identity
        self._directory = directory
        self._clients: dict[str, RpcClient] = {}
        self._connecting: dict[str, asyncio.Future[RpcClient]] = {}
        self._rotation = random.randrange(1 << 16)  # spread workers over the managers

    async def use_identity(self, identity: NodeIdentity) -> None:
        """A renewed certificate: later connections present it (kept ones are closed)."""
        self.identity = identity
        await self.close()

    async def close(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()

    def targets(self) -> list[str]:
        """Managers to try, in order: the leader first when known, then the rest rotated."""
        managers, leader = self._directory()
        if not managers:
            return []
        i = self._rotation % len(managers)
        ordered = managers[i:] + managers[:i]
        if leader in ordered:
            ordered.remove(leader)
            ordered.insert(0, leader)
        return ordered

    async def ask(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Any:
        """`method` on the first manager that answers, by the failover rule (module doc)."""
        errors = []
        for addr in self.targets():
            try:
                return await self.call(addr, method, params, timeout)
            except RpcError as exc:
                errors.append(f"{addr}: {exc.message}")
                if exc.code not in FAILOVER_CODES:
                    raise
                self._rotation += 1
        raise RpcError("unreachable", "no manager answered: " + "; ".join(errors or ["none known"]))

    async def call(
        self, addr: str, method: str, params: dict[str, Any], timeout: float = 5.0
    ) -> Any:
        """`method` on the manager at `addr` (its certificate must say manager)."""
        host, port = split_addr(addr)
        return await self._call(addr, host, port, "manager", method, params, timeout)

    async def call_node(
        self, host: str, port: int, method: str, params: dict[str, Any], timeout: float = 10.0
    ) -> Any:
        """A method every node serves (task_logs) on the node at host:port."""
        key = f"node:{host}:{port}"  # apart from the manager clients: no role expected
        return await self._call(key, host, port, None, method, params, timeout)

    async def _connection(
        self, key: str, host: str, port: int, role: str | None, timeout: float
    ) -> RpcClient:
        """The kept connection to `key`, made once however many calls want it at the same time.

        A node's heartbeat, task and network-map loops start together: without the shared
        connect each made its own mutual-TLS connection (and all but one were closed again), a
        full handshake each on the manager, most of its CPU per joining node."""
        client = self._clients.get(key)
        if client is not None and not client.closed:
            return client
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(key, host, port, role, timeout))
            self._connecting[key] = pending
            pending.add_done_callback(lambda f: self._connected(key, f))
        # shielded: one caller's cancel (its own timeout) must not fail the others' connect
        return await asyncio.shield(pending)

    def _connected(self, key: str, fut: asyncio.Future[RpcClient]) -> None:
        self._connecting.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved here: every caller may have given up on it

    async def _connect(
        self, key: str, host: str, port: int, role: str | None, timeout: float
    ) -> RpcClient:
        while True:
            identity = self.identity
            ctx = client_ssl_context(identity, identity.ca_pem)
            client = await RpcClient.connect_tcp(
                host, port, ctx, timeout, expect_role=role, expect_cluster=identity.cluster_id
            )
            if identity is self.identity:
                self._clients[key] = client
                return client
            await client.close()  # renewed meanwhile: connect again with the new certificate

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
        client = await self._connection(key, host, port, role, timeout)
        try:
            return await client.call(method, params, timeout)
        except RpcError as exc:
            if exc.code in ("unreachable", "timeout"):
                self._clients.pop(key, None)
                await client.close()
            raise
