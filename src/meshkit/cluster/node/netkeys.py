"""The leader's duty for encrypted overlays: make, rotate and retire the networks' keys
(meshkit.cluster.api.netkeys does one round; this loop runs it every few seconds, and at once
after a command that may call for it: a node removed, a network created)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from meshkit.cluster.api import netkeys
from meshkit.cluster.api.context import NodeContext

log = logging.getLogger("meshkit.cluster.netkeys")

EVERY = 5.0


async def leader_loop(node: NodeContext, due: asyncio.Event, stopping: Callable[[], bool]) -> None:
    """Until ``stopping()`` says so: a round of key changes on the leader, every EVERY
    seconds or when ``due`` is set."""
    while not stopping():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(due.wait(), EVERY)
        due.clear()
        try:
            await netkeys.tick(node)
        except Exception:  # a failed round is retried at the next one
            log.exception("network keys: round failed")
