"""`Membership`: a manager's side of the heartbeats, and the leader's duties over the members.

Every manager takes beats; a follower passes the beats it took to the leader about once a
second (`beats`). The leader counts them (`Liveness`): 3 missed beats make a node Down, a new
beat makes it Ready again; it also keeps the raft members equal to the managers in the state,
and commits the overlay reports that came with the beats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import state as cstate
from meshkit.cluster.model.clusterops import retime_liveness
from meshkit.cluster.node.config import NodeConfig
from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.node.roles import Roles
from meshkit.cluster.rpc.transport import RpcError

log = logging.getLogger(__name__)

MISSED_BEATS = 3
FULL_SCAN_EVERY = 0.5
"""Seconds between two scans of every node's liveness on the leader; a beat that revives a
node, or a status committed, checks those nodes alone at once (a full scan per new node's
first beat made growth O(nodes^2): py-spy of a 5,000-node leader, 5.5 % of its samples)."""


class Membership:
    """Beats taken, node statuses and raft members, on a manager."""

    def __init__(
        self,
        node: NodeContext,
        cfg: NodeConfig,
        roles: Roles,
        managers: ManagerClient,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.roles = roles
        self.managers = managers
        self._spawn = spawn
        self.liveness = cstate.Liveness(cfg.heartbeat_period, MISSED_BEATS)
        self._was_leader = False
        self._members_key: tuple[int, int, int] = (0, 0, -1)
        self._members: set[str] = set()
        self._pending_beats: set[str] = set()
        self._overlay_commits: dict[str, dict[str, Any]] = {}
        self.check_now = asyncio.Event()  # statuses or members may have changed: look now
        self._suspects: set[str] = set()  # nodes to look at now (check_nodes)
        self._full_now = False  # look at every node now (check_all)
        self._last_full = float("-inf")
        self._flush_now = asyncio.Event()

    def reset(self) -> None:
        """A replica (re)started: counts start again."""
        self.liveness = cstate.Liveness(self.cfg.heartbeat_period, MISSED_BEATS)
        self._was_leader = False

    def note_beat(self, node_id: str) -> None:
        """A heartbeat this manager took (or was told about by another manager)."""
        store, st = self.roles.store, self.node.state
        if store is None or st is None:
            return
        now = time.monotonic()
        if store.is_leader:
            revived = self.liveness.beat(node_id, now)
            record = st.nodes.get(node_id)
            if revived or (record is not None and record.status != cstate.READY):
                self.check_nodes((node_id,))
        else:
            self._pending_beats.add(node_id)
            record = st.nodes.get(node_id)
            if record is not None and record.status != cstate.READY:
                self._flush_now.set()

    def check_nodes(self, node_ids: Any) -> None:
        """Look at these nodes' liveness now (the others at the next full scan)."""
        self._suspects.update(node_ids)
        self.check_now.set()

    def check_all(self) -> None:
        """Look at every node, and at the raft members, now."""
        self._full_now = True
        self.check_now.set()

    def note_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        """A node's overlay report changed: commit it (once per distinct report in flight)."""
        if self._overlay_commits.get(node_id) == overlay:
            return
        self._overlay_commits[node_id] = overlay
        self._spawn(self._commit_overlay(node_id, overlay))

    async def _commit_overlay(self, node_id: str, overlay: dict[str, Any]) -> None:
        try:
            await self.node.submit({"op": "set_overlay", "node_id": node_id, "overlay": overlay})
        except Exception as exc:  # the next beat that still differs tries again
            log.debug("overlay report of %s not committed: %s", node_id, exc)
        finally:
            if self._overlay_commits.get(node_id) == overlay:
                del self._overlay_commits[node_id]

    def _raft_members(self, st: cstate.ClusterState) -> set[str]:
        """The managers' raft addresses, kept until a manager changes (O(nodes) to make)."""
        key = (id(st), id(st.nodes), st.manager_changes)
        if key != self._members_key:
            self._members = {m.raft_addr for m in st.managers()}
            self._members_key = key
        return set(self._members)

    async def leader_loop(self) -> None:
        """Leader duties: statuses from the beats, raft members from the managers."""
        while not self.node.stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.check_now.wait(), min(0.5, self.cfg.heartbeat_period / 2)
                )
            self.check_now.clear()
            suspects, self._suspects = self._suspects, set()
            store, st = self.roles.store, self.node.state
            if store is None or st is None or not st.initialized:
                self._was_leader = False
                continue
            if store.is_leader and not self._was_leader:
                self.liveness = cstate.Liveness(st.heartbeat_period, MISSED_BEATS)
                self.liveness.start(time.monotonic())
                self.liveness.beat(self.node.node_id, time.monotonic())
                self._last_full = float("-inf")
                log.info("this node (%s) is now the raft leader", self.node.node_id)
            self._was_leader = store.is_leader
            if not store.is_leader:
                continue
            if self.liveness.period != st.heartbeat_period:  # `cluster update`
                self.liveness = retime_liveness(
                    self.liveness, st.heartbeat_period, st.nodes, time.monotonic()
                )
            self.liveness.beat(self.node.node_id, time.monotonic())
            store.reconcile_members(self._raft_members(st))
            now = time.monotonic()
            every = min(FULL_SCAN_EVERY, self.cfg.heartbeat_period / 2)
            if self._full_now or now - self._last_full >= 0.9 * every:
                self._full_now, self._last_full = False, now
                changes = self.liveness.node_changes(st.nodes, now)
            else:
                nodes = st.nodes
                picked = {n: nodes[n] for n in suspects if n in nodes}
                changes = self.liveness.node_changes(picked, now)
            if changes and store.has_quorum:
                try:
                    await store.submit(
                        {"op": "set_status", "statuses": changes, "now": time.time()}
                    )
                    log.info("node status: %s", ", ".join(f"{k} {v}" for k, v in changes.items()))
                except MeshkitError as exc:
                    log.warning("cannot record node status: %s", exc)

    async def flush_loop(self) -> None:
        """Followers pass the beats they took to the leader, about once a second."""
        while not self.node.stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._flush_now.wait(), min(1.0, self.cfg.heartbeat_period / 3)
                )
            self._flush_now.clear()
            store = self.roles.store
            if not self._pending_beats or store is None or store.is_leader:
                if store is not None and store.is_leader:
                    for node_id in self._pending_beats:
                        self.note_beat(node_id)
                self._pending_beats.clear()
                continue
            leader = self.roles.leader_api_addr()
            if leader is None:
                continue
            seen = sorted(self._pending_beats)
            self._pending_beats.clear()
            try:
                await self.managers.call(leader, "beats", {"seen": seen}, timeout=3)
            except RpcError as exc:
                log.debug("passing beats to %s: %s", leader, exc)
                self._pending_beats.update(seen)
