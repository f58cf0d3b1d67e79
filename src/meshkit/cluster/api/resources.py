"""Committing the CPUs and memory nodes report with their heartbeats (the scheduler's
reservations filter reads them from the state), off the heartbeat's own path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshkit.cluster.api.context import NodeContext

log = logging.getLogger("meshkit.cluster.api.nodes")  # the heartbeat path's logger


class ResourceCommits:
    """One `set_resources` write in flight per distinct report: a heartbeat never waits for
    raft, and a burst of identical beats proposes once."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self._inflight: set[tuple[str, str]] = set()
        self._jobs: set[asyncio.Task[None]] = set()

    def commit(self, node_id: str, resources: dict[str, Any]) -> None:
        """A node's CPUs and memory changed (or were never reported): commit them, once per
        distinct report in flight; the next beat that still differs tries again."""
        key = (node_id, repr(sorted(resources.items())))
        if key in self._inflight:
            return
        self._inflight.add(key)

        async def commit() -> None:
            try:
                cmd = {"op": "set_resources", "node_id": node_id, "resources": resources}
                await self.node.submit(cmd)
            except Exception as exc:
                log.debug("resources of %s not committed: %s", node_id, exc)
            finally:
                self._inflight.discard(key)

        job = asyncio.get_running_loop().create_task(commit())
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
