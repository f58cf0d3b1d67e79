"""`Renewal`: this node's certificate, renewed at a random point between 50 % and 80 % of its
lifetime (and by every role change, which needs a certificate with the new role), and at once
when a CA rotation asks for it: a heartbeat reply then names the bundle digest and the signing
root wanted (`want`); a node whose identity differs renews and acks the phase (`ca_ack`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.node.config import CERT_DIR, NodeConfig
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.rpc.pki import NodeIdentity, issuer_key_id, new_node_key_and_csr
from meshkit.cluster.rpc.tokens import ca_digest
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
        self._wanted: dict[str, Any] | None = None  # the CA rotation's wish (heartbeat reply)
        self._acked: tuple[str, str] = ("", "")
        self._wake = asyncio.Event()

    def want(self, ca: dict[str, Any]) -> None:
        """A heartbeat reply's ``ca``: renew now if this node's certificate or bundle is not
        the one the rotation's phase wants, or ack the phase if it already is."""
        self._wanted = ca
        if self._pending() is not None:
            self._wake.set()

    def _pending(self) -> str | None:
        """What the wanted rotation phase still needs from here: "renew", "ack" or None."""
        ca = self._wanted
        if not ca:
            return None
        ident = self.node.identity
        signer = issuer_key_id(ident.cert_pem)
        if ca_digest(ident.ca_pem) != ca.get("bundle") or signer != ca.get("signer"):
            return "renew"
        if self._acked != (str(ca.get("id")), str(ca.get("phase"))):
            return "ack"
        return None

    async def _rotation_step(self) -> None:
        """Renew and/or ack for the CA rotation (under ``lock``)."""
        step = self._pending()
        ca = self._wanted
        if step is None or ca is None:
            return
        if step == "renew":
            await self.renew()
            if self._pending() != "ack":
                return  # the phase moved on meanwhile: the next beat says what is wanted
        params = {"node_id": self.node.node_id, "id": ca.get("id"), "phase": ca.get("phase")}
        if self.node.is_manager and (self.node.is_leader or not self.managers.targets()):
            await self.node.call_self("ca_ack", params)
        else:
            await self.managers.ask("ca_ack", params)
        self._acked = (str(ca.get("id")), str(ca.get("phase")))
        log.info("CA rotation %s: phase %s done here", ca.get("id"), ca.get("phase"))

    async def loop(self) -> None:
        while not self.node.stopping:
            renew_at = self.node.identity.renew_at(self._rng)
            rotation = False
            while time.time() < renew_at and not rotation:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), min(5.0, max(0.05, renew_at - time.time()))
                    )
                rotation = self._pending() is not None
            try:
                async with self.lock:
                    if rotation:
                        await self._rotation_step()
                    else:
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
