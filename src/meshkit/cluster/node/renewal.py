"""`Renewal`: this node's certificate, renewed at a random point between 50 % and 80 % of its
lifetime (and by every role change, which needs a certificate with the new role)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.node.config import CERT_DIR, NodeConfig
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.rpc.pki import NodeIdentity, new_node_key_and_csr
from meshkit.cluster.rpc.transport import RpcError

log = logging.getLogger(__name__)


class Renewal:
    """Renews this node's certificate; `lock` keeps renewals and role changes apart."""

    def __init__(
        self,
        node: NodeContext,
        cfg: NodeConfig,
        managers: ManagerClient,
        on_renewed: Callable[[NodeIdentity], Awaitable[None]],
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.managers = managers
        self._on_renewed = on_renewed  # the node takes the new identity into use
        self.lock = asyncio.Lock()
        self._rng = random.Random()

    async def loop(self) -> None:
        while not self.node.stopping:
            renew_at = self.node.identity.renew_at(self._rng)
            while time.time() < renew_at:
                await asyncio.sleep(min(5.0, max(0.05, renew_at - time.time())))
            try:
                async with self.lock:
                    await self.renew()
            except (RpcError, MeshkitError) as exc:
                log.warning("certificate renewal failed: %s; retrying", exc)
                await asyncio.sleep(min(5.0, self.cfg.heartbeat_period))

    async def renew(self) -> dict[str, Any]:
        """A new certificate for this node, with the role the cluster state says."""
        node = self.node
        key_pem, csr_pem = new_node_key_and_csr(node.node_id)
        params = {"node_id": node.node_id, "csr": csr_pem.decode()}
        reply: dict[str, Any]
        if node.is_manager and (node.is_leader or not self.managers.targets()):
            reply = dict(await node.call_self("renew", params))
        else:
            reply = dict(await self.managers.ask("renew", params))
        identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, reply["ca"].encode())
        if identity.node_id != node.node_id or identity.cluster_id != node.cluster_id:
            raise MeshkitError("the renewed certificate names another node or cluster")
        identity.save(node.data_dir / CERT_DIR)
        await self._on_renewed(identity)
        log.info(
            "certificate renewed (%s), valid until %s",
            identity.role,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(identity.not_after)),
        )
        return reply
