"""`Roles`: the raft replica a manager runs (start, stop, the first commit of a new cluster) and
the changes between worker and manager that the cluster state asks for.

A role change renews the certificate first (the new one carries the new role), then starts or
stops the replica, then writes node.json. A leader about to be demoted first hands leadership to
another manager.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from meshkit import __version__
from meshkit.base.errors import MeshkitError
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import state as cstate
from meshkit.cluster.node.config import RAFT_DIR, SECRET_FILE, NodeConfig, write_secret
from meshkit.cluster.node.renewal import Renewal
from meshkit.cluster.raft import autolock
from meshkit.cluster.raft.etcd_spec import StoreSpec
from meshkit.cluster.raft.etcd_store import EtcdStore
from meshkit.cluster.raft.sealing import DATA_KEY_FILE, Sealer, load_data_key, save_data_key
from meshkit.cluster.raft.store import RaftStore, RaftTimings
from meshkit.cluster.rpc.transport import RpcError

log = logging.getLogger(__name__)

Applied = Callable[[Any, dict[str, Any]], None]


def store_caught_up(store: RaftStore | EtcdStore) -> bool:
    """The replica has applied every entry it knows committed. Asked twice a second: a raft
    store answers from two counters, not its whole status (which renders the stall list)."""
    if isinstance(store, RaftStore):
        return store.caught_up
    status = store.status()
    return bool(status["last_applied"] >= status["commit_index"])


class Roles:
    """This node's raft replica, and its moves between the worker and manager roles."""

    def __init__(
        self,
        node: NodeContext,
        cfg: NodeConfig,
        renewal: Renewal,
        timings: RaftTimings,
        *,
        on_applied: Applied,
        on_started: Callable[[], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.renewal = renewal
        self.timings = timings
        self._on_applied = on_applied
        self._on_started = on_started  # the replica is up: listen, reset the beat counts
        self._spawn = spawn
        self.store: RaftStore | EtcdStore | None = None
        self._sealer: Sealer | None = None
        self._leader_api_key: tuple[int, int, int, str | None] = (0, 0, -1, None)
        self._leader_api: str | None = None

    @property
    def raft_dir(self) -> Path:
        return self.node.data_dir / RAFT_DIR

    @property
    def raft_addr(self) -> str:
        return f"{self.cfg.advertise_addr}:{self.cfg.raft_port}"

    # -- the replica ---------------------------------------------------------------------------

    async def start_manager(self, peers: list[str]) -> None:
        secret_path = self.raft_dir / SECRET_FILE
        gate = autolock.gate_for(self.raft_dir)
        if autolock.is_locked(self.raft_dir) and gate.key is None:
            await self._wait_unlock(gate)
        try:
            secret = autolock.read_file(secret_path, gate.key)
        except OSError as exc:
            raise MeshkitError(f"cannot read the raft secret {secret_path}: {exc}") from None
        store: RaftStore | EtcdStore
        if self.cfg.store:  # the log lives in etcd (`node init --store etcd://...`)
            spec = StoreSpec.from_dict(self.cfg.store)
            store = EtcdStore(self.raft_addr, spec, self.cfg.cluster_id)
        else:
            store = RaftStore(self.raft_addr, peers, self.raft_dir, secret, self.timings)
        store.on_applied = self._on_applied
        await store.start()
        self.store = store
        self._spawn(self._lock_loop(store))
        try:
            await self._on_started()
        except MeshkitError:
            store.close()
            self.store = None
            raise

    async def stop_manager(self, wipe: bool) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if wipe:
            shutil.rmtree(self.raft_dir, ignore_errors=True)
            autolock.gate_for(self.raft_dir).key = None

    @property
    def sealer(self) -> Sealer:
        """Opens and seals the state's secrets with this manager's cluster data key (read
        from raft/datakey, or its locked form with the unlock key; a node without it can
        open only plain values)."""
        if self._sealer is None or not self._sealer.key:
            path = self.raft_dir / DATA_KEY_FILE
            key = autolock.gate_for(self.raft_dir).key
            try:
                self._sealer = Sealer(autolock.read_file(path, key))
            except FileNotFoundError:
                self._sealer = Sealer(load_data_key(path))
            except autolock.LockError:
                self._sealer = Sealer("")
        return self._sealer

    # -- autolock ------------------------------------------------------------------------------

    async def _wait_unlock(self, gate: autolock.Gate) -> None:
        """A locked manager: wait for `meshkit node unlock` (or the agent's stop)."""
        log.warning("%s (data dir %s)", autolock.LOCKED_TEXT, self.node.data_dir)
        waiter = asyncio.ensure_future(gate.wait())
        try:
            while not waiter.done():
                if self.node.stopping:
                    raise MeshkitError("the agent stopped while this manager was locked")
                await asyncio.wait({waiter}, timeout=0.2)
        finally:
            waiter.cancel()
        log.info("manager unlocked")

    async def _lock_loop(self, store: RaftStore | EtcdStore) -> None:
        """Keep this manager's raft-dir secrets locked as the state says (autolock on/off, a
        rotated unlock key), once the replica has applied what its journal held."""
        while self.store is store and not self.node.stopping:
            try:
                self.sync_lock(store)
            except (MeshkitError, OSError) as exc:
                log.warning("autolock: cannot update this manager's locked keys: %s", exc)
            await asyncio.sleep(0.5)

    def sync_lock(self, store: RaftStore | EtcdStore) -> None:
        st = store.state
        if not st.initialized or not store_caught_up(store):
            return
        want = self.sealer.open(st.unlock_key) if st.autolock and st.unlock_key else None
        gate = autolock.gate_for(self.raft_dir)
        locked_as_wanted = (
            not autolock.in_clear(self.raft_dir) if want else not autolock.is_locked(self.raft_dir)
        )
        if want == gate.key and locked_as_wanted:
            return
        autolock.relock(self.raft_dir, gate.key, want)
        gate.key = want
        log.info("autolock: this manager's keys are %s", "locked" if want else "in clear")

    async def bootstrap(self, cluster: dict[str, Any]) -> None:
        """The first manager: wait to lead the one-member raft, then commit `init` (or, for
        `node init --force-new-cluster`, `force_new_cluster` with the state it kept)."""
        assert self.store is not None
        deadline = time.monotonic() + 30
        while not self.store.is_leader:
            if time.monotonic() > deadline:
                raise MeshkitError("the new cluster's raft did not elect this node leader")
            await asyncio.sleep(0.05)
        now = time.time()
        if "force_new_cluster" in cluster:
            result = await self.store.submit(
                {
                    "op": "force_new_cluster",
                    "state": cluster["force_new_cluster"],
                    "node_id": self.node.node_id,
                    "raft_secret": self.sealer.seal(str(cluster["raft_secret"])),
                    "now": now,
                }
            )
            log.warning(
                "forced a new cluster from this manager's state: it is the only manager; "
                "former managers %s are now Down workers (remove them with `meshkit node rm`)",
                ", ".join(result.get("demoted") or []) or "(none)",
            )
            self.cfg.managers = [self.node.api_addr]
            self.cfg.save(self.node.data_dir)
            return
        record = cstate.NodeRecord(
            id=self.node.node_id,
            hostname=self.cfg.hostname,
            role="manager",
            addr=self.cfg.advertise_addr,
            api_port=self.cfg.listen_port,
            raft_port=self.cfg.raft_port,
            version=__version__,
            created_at=now,
            updated_at=now,
        )
        await self.store.submit(
            {"op": "init", "cluster": cluster, "node": record.to_dict(), "now": now}
        )
        self.cfg.managers = [self.node.api_addr]
        self.cfg.save(self.node.data_dir)

    # -- what the replica says about the managers ----------------------------------------------

    def leader_api_addr(self) -> str | None:
        if self.store is None or self.store.state is None:
            return None
        st, leader = self.store.state, self.store.leader
        # asked on every heartbeat: scanning all nodes each time made a beat's cost grow
        # with the cluster, so the answer is kept until a manager or the leader changes
        key = (id(st), id(st.nodes), st.manager_changes, leader)
        if key != self._leader_api_key:
            self._leader_api = next(
                (m.api_addr for m in st.managers() if m.raft_addr == leader), None
            )
            self._leader_api_key = key
        return self._leader_api

    def manager_status(self, node: cstate.NodeRecord) -> str:
        if node.role != "manager" or self.store is None:
            return ""
        if node.raft_addr == self.store.leader:
            return "Leader"
        if self.store.connected(node.raft_addr):
            return "Reachable"
        return "Unreachable"

    # -- role changes --------------------------------------------------------------------------

    def check_own_role(self) -> None:
        """After a set_role: change roles when the state gives this node another one."""
        st = self.node.state
        if st is None:
            return
        record = st.nodes.get(self.node.node_id)
        if record is not None and record.role != self.node.identity.role:
            self._spawn(self.change_role(record.role))

    async def change_role(self, role: str) -> None:
        async with self.renewal.lock:
            st = self.node.state
            record = st.nodes.get(self.node.node_id) if st is not None else None
            if record is not None and record.role != role:
                # A replica replaying the log passes through this node's earlier roles (a
                # promote after a demote shows `worker` for a moment): act on the role the
                # state holds now, not on the one that scheduled this change.
                role = record.role
            if role == self.node.identity.role and (role == "manager") == (self.store is not None):
                return
            log.info("role change: %s -> %s", self.node.identity.role, role)
            if role == "worker":
                await self._hand_over_leadership()
            try:
                reply = await self.renewal.renew()
            except (RpcError, MeshkitError) as exc:
                log.warning("role change to %s: renewal failed: %s", role, exc)
                return
            new_role = self.node.identity.role
            if new_role == "manager" and self.store is None:
                # A new raft member starts empty: the leader sends it the log or a snapshot.
                shutil.rmtree(self.raft_dir, ignore_errors=True)
                write_secret(self.raft_dir / SECRET_FILE, str(reply["raft_secret"]))
                if reply.get("data_key"):
                    save_data_key(self.raft_dir / DATA_KEY_FILE, reply["data_key"])
                self._sealer = None
                if reply.get("store_url") and not self.cfg.store:
                    # promoted in a cluster whose log is in etcd: reach the same etcd
                    self.cfg.store = {"url": str(reply["store_url"])}
                await self.start_manager([str(p) for p in reply.get("raft_peers") or []])
            elif new_role == "worker" and self.store is not None:
                await self.stop_manager(wipe=True)
                self._sealer = None
            self.cfg.role = new_role
            self.cfg.save(self.node.data_dir)
            log.info("this node is now a %s", new_role)

    async def _hand_over_leadership(self, timeout: float = 5.0) -> None:
        """A leader about to stop being a manager first makes another manager leader."""
        deadline = time.monotonic() + timeout
        while self.store is not None and self.store.is_leader and time.monotonic() < deadline:
            st = self.node.state
            others = set() if st is None else {m.raft_addr for m in st.managers()}
            others.discard(self.raft_addr)
            if not others:
                return
            self.store.reconcile_members(others)
            await asyncio.sleep(0.2)
