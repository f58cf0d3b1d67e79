"""`Heartbeat`: this node's beat to a manager every period, and what it takes from the reply
(the period, the managers, its role as the cluster state says)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from meshkit import __version__
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import state as cstate
from meshkit.cluster.node.config import NodeConfig
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.rpc.transport import RpcError
from meshkit.cluster.tasks.cgroups import node_resources

log = logging.getLogger(__name__)


class Heartbeat:
    """Sends this node's heartbeats."""

    def __init__(
        self,
        node: NodeContext,
        cfg: NodeConfig,
        managers: ManagerClient,
        on_role: Callable[[str], None],
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.managers = managers
        self._on_role = on_role  # the state gives this node another role
        self.on_ca: Callable[[dict[str, Any]], None] | None = None  # renewal.want

    async def loop(self) -> None:
        while not self.node.stopping:
            try:
                reply = await self.beat()
            except RpcError as exc:
                # every manager was tried already: wait for the next beat
                log.warning("heartbeat failed: %s", exc.message)
                await asyncio.sleep(self.cfg.heartbeat_period)
                continue
            except Exception:
                log.exception("heartbeat failed")
                await asyncio.sleep(self.cfg.heartbeat_period)
                continue
            if reply is not None:
                self.take_reply(reply)
            await asyncio.sleep(self.cfg.heartbeat_period)

    async def beat(self) -> dict[str, Any] | None:
        node = self.node
        status: dict[str, Any] = {
            "version": __version__,
            "overlay": node.overlay.report(),
            "resources": node_resources(),  # CPUs and memory, for reservations
        }
        if status["overlay"] and node.mesh.vip_ports.path:  # doctor: each node's VIP path
            status["overlay"]["vip_ports"] = node.mesh.vip_ports.path
        params = {"node_id": node.node_id, "status": status}
        if node.is_manager and node.is_leader:
            return dict(await node.call_self("heartbeat", params))
        if node.is_manager and not self.managers.targets():
            node.note_beat(node.node_id)
            return None
        try:
            return dict(await self.managers.ask("heartbeat", params))
        except RpcError:
            if node.is_manager:  # no other manager answers: count our own beat locally
                node.note_beat(node.node_id)
            raise

    def take_reply(self, reply: dict[str, Any]) -> None:
        cfg = self.cfg
        period = float(reply.get("period") or cfg.heartbeat_period)
        managers = [str(m) for m in reply.get("managers") or []]
        changed = False
        if period != cfg.heartbeat_period:
            cfg.heartbeat_period = period
            changed = True
        if managers and managers != cfg.managers:
            cfg.managers = managers
            changed = True
        if changed:
            cfg.save(self.node.data_dir)
        ca = reply.get("ca")  # a CA rotation in progress (meshkit.cluster.api.carotation)
        if isinstance(ca, dict) and self.on_ca is not None:
            self.on_ca(ca)
        role = reply.get("role")
        if role in cstate.ROLES and role != self.node.identity.role:
            self._on_role(str(role))
