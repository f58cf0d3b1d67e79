"""`NodeWeb`: the Caddyfile of `--web`, served on the agent's loop; SIGHUP re-reads it.

Automatic HTTPS sites get their certificates through the cluster (meshkit.cluster.node
.webcerts): one node orders a name, every node serves the certificate, which lives in the
replicated state (its key sealed) and in this process's memory, never on this node's disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from meshkit.base.cancel import cancel_and_wait

if TYPE_CHECKING:
    from meshkit.cluster.api.context import NodeContext
    from meshkit.cluster.node.webcerts import NodeCerts
    from meshkit.mesh.node import NodeMesh
    from meshkit.web.embedded import EmbeddedWeb

log = logging.getLogger(__name__)


class NodeWeb:
    """The node's embedded web server, when node.json names a Caddyfile."""

    def __init__(self, caddyfile: str, mesh: NodeMesh, node: NodeContext | None = None) -> None:
        self.caddyfile = caddyfile
        self.mesh = mesh
        self.node = node  # None: no automatic HTTPS (ACME sites are refused)
        self.server: EmbeddedWeb | None = None
        self.certs: NodeCerts | None = None
        self._follow: asyncio.Task[None] | None = None

    async def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Serve the Caddyfile. One broken since the node was made stops the agent with the
        reasons (file:line)."""
        if not self.caddyfile:
            return
        from meshkit.web.embedded import start_embedded  # only nodes with --web load web/

        hub = issuer = None
        if self.node is not None:
            from meshkit.cluster.node.webcerts import NodeCerts
            from meshkit.web.autotls import CertHub

            hub = CertHub()
            self.certs = NodeCerts(self.node, hub)
            self._follow = asyncio.get_running_loop().create_task(
                self.certs.follow(), name="webcerts"
            )
            issuer = self.certs.issuer()
        self._use_stapler()
        try:
            self.server = await start_embedded(self.caddyfile, self.mesh, hub=hub, issuer=issuer)
        except BaseException:
            await self._stop_follow()
            raise
        log.info(
            "web server: %s on port(s) %s",
            self.caddyfile,
            ", ".join(str(p) for p in self.server.ports),
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: spawn(self.reload())
            )

    def _use_stapler(self) -> None:
        """OCSP stapling of every served certificate with a responder, as `meshkit web` does;
        the responses are kept under the node's data directory."""
        from meshkit.acme.stapler import OcspStapler
        from meshkit.web import staple

        root = self.node.data_dir if self.node is not None else None
        staple.use(lambda: OcspStapler(root))

    async def reload(self) -> None:
        if self.server is not None and await self.server.reload():
            log.info("web server: %s reloaded", self.caddyfile)

    async def _stop_follow(self) -> None:
        task, self._follow = self._follow, None
        await cancel_and_wait(task)

    async def stop(self) -> None:
        if self.server is not None:
            try:
                await self.server.stop(2.0)
            except Exception:
                log.exception("stopping the web server failed")
            self.server = None
        await self._stop_follow()
