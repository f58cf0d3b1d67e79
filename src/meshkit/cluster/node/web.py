"""`NodeWeb`: the Caddyfile of `--web`, served on the agent's loop; SIGHUP re-reads it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshkit.mesh.node import NodeMesh
    from meshkit.web.embedded import EmbeddedWeb

log = logging.getLogger(__name__)


class NodeWeb:
    """The node's embedded web server, when node.json names a Caddyfile."""

    def __init__(self, caddyfile: str, mesh: NodeMesh) -> None:
        self.caddyfile = caddyfile
        self.mesh = mesh
        self.server: EmbeddedWeb | None = None

    async def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Serve the Caddyfile. One broken since the node was made stops the agent with the
        reasons (file:line)."""
        if not self.caddyfile:
            return
        from meshkit.web.embedded import start_embedded  # only nodes with --web load web/

        self.server = await start_embedded(self.caddyfile, self.mesh)
        log.info(
            "web server: %s on port(s) %s",
            self.caddyfile,
            ", ".join(str(p) for p in self.server.ports),
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: spawn(self.reload())
            )

    async def reload(self) -> None:
        if self.server is not None and await self.server.reload():
            log.info("web server: %s reloaded", self.caddyfile)

    async def stop(self) -> None:
        if self.server is not None:
            try:
                await self.server.stop(2.0)
            except Exception:
                log.exception("stopping the web server failed")
            self.server = None
