"""`EtcdReplica`: one manager's copy of the cluster state, following the log kept in etcd.

It applies the commands of ``P w/log/`` through the raft store's state machine in etcd's
revision order: a consistent catch-up read (one txn: leader, members, snapshot meta, trim mark
and the log), the snapshot when log entries it needs were trimmed, then a watch from the next
revision. A lost watch (etcd gone, or compacted past it) is followed by a new catch-up read.
The store's interface on top of it is meshkit.cluster.raft.etcd_store.EtcdStore.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft import etcd_keys
from meshkit.cluster.raft.etcd_http import EtcdError, EtcdHttp, b64, prefix_end, unb64
from meshkit.cluster.raft.etcd_keys import Keys, range_op
from meshkit.cluster.raft.etcd_lease import Lease
from meshkit.cluster.raft.etcd_spec import StoreSpec
from meshkit.cluster.raft.store import StallLog, _StateMachine

log = logging.getLogger("meshkit.cluster.raft.etcd_store")


@dataclass(frozen=True)
class EtcdTimings:
    lease_ttl: int = 5  # seconds; a dead leader's duties move after at most this
    keepalive: float = 1.5
    commit_timeout: float = 8.0
    request_timeout: float = 3.0
    retry: float = 0.5
    probe: float = 0.1  # the loop-stall probe's period
    compact_entries: int = 500
    compact_seconds: float = 600.0

    @classmethod
    def for_lease(cls, ttl: int) -> EtcdTimings:
        """The default timings with a lease of `ttl` seconds (0: the default), kept alive at
        the same share of it (a keep-alive every 30% of the lease)."""
        if not ttl:
            return cls()
        return cls(lease_ttl=ttl, keepalive=round(ttl * 0.3, 3))


class EtcdReplica:
    """The state, as etcd's log makes it; the etcd client and this manager's lease."""

    def __init__(
        self,
        self_addr: str,
        spec: StoreSpec,
        cluster_id: str,
        timings: EtcdTimings | None = None,
    ) -> None:
        self.self_addr = self_addr
        self.spec = spec
        self.timings = timings or EtcdTimings.for_lease(spec.lease_ttl)
        self.keys = Keys.of(cluster_id)
        self.http = EtcdHttp(spec.endpoints, spec.ssl_context())
        t = self.timings
        self.lease = Lease(
            self.http, self.keys, self_addr, t.lease_ttl, t.keepalive, t.request_timeout
        )
        self._machine = _StateMachine()
        self._machine.on_applied = self._applied
        self.on_applied: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None
        self.applied = 0  # the etcd revision this replica has applied up to
        self.commit_seen = 0  # the highest revision of our prefix known to be committed
        self.snapshot_rev = 0
        self._log_keys: dict[str, int] = {}  # log entries in etcd, oldest first
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        self._leader: str | None = None
        self._leader_lease = 0
        self._members: set[str] = set()
        self._watching = False
        self._error = ""
        self._by_cid: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._wake_campaign = asyncio.Event()
        self._watch_ready = asyncio.Event()
        self.stalls = StallLog()
        self.slowest_tick = 0.0
        self._probe_due = 0.0
        self._probe_cpu = 0.0

    @property
    def state(self) -> cstate.ClusterState:
        return self._machine.state

    def _schedule_probe(self) -> None:
        if self._closed or self._loop is None:
            return
        self._probe_due = time.monotonic() + self.timings.probe
        self._probe_cpu = time.process_time()
        self._loop.call_later(self.timings.probe, self._probe)

    def _probe(self) -> None:
        # How late this timer fires is how long the loop was held (the raft store measures
        # the same with its tick timer): the managers' loop-stall figure.
        late = time.monotonic() - self._probe_due
        self.stalls.note(late, time.process_time() - self._probe_cpu)
        self.slowest_tick = max(self.slowest_tick, late)
        self._schedule_probe()

    # -- reading etcd --------------------------------------------------------------------------

    async def _sync(self) -> None:
        """Catch up: one consistent read of everything under the prefix, then the snapshot if
        log entries this replica needs were trimmed. Afterwards `applied` is etcd's revision."""
        answer = await self.http.call(
            "/v3/kv/txn",
            {
                "success": [
                    range_op(self.keys.leader),
                    range_op(self.keys.members, prefix=True),
                    range_op(self.keys.meta),
                    range_op(self.keys.trimmed),
                    range_op(self.keys.log, prefix=True, sort_order="ASCEND", sort_target="MOD"),
                ]
            },
            timeout=30.0,
        )
        head = int(answer["header"]["revision"])
        ranges = [r.get("response_range", {}).get("kvs", []) for r in answer["responses"]]
        leader, members, meta, trimmed, entries = ranges
        trimmed_rev = int(unb64(trimmed[0]["value"])) if trimmed else 0
        meta_doc = json.loads(unb64(meta[0]["value"])) if meta else None
        if meta_doc is not None:
            self.snapshot_rev = max(self.snapshot_rev, int(meta_doc["rev"]))
        if meta_doc is not None and int(meta_doc["rev"]) > self.applied:
            if trimmed_rev > self.applied or self.applied == 0:
                await self._load_snapshot(meta_doc, head)
        elif trimmed_rev > self.applied:
            raise EtcdError(f"log entries up to revision {trimmed_rev} are gone, no snapshot")
        self._log_keys = {}
        for kv in entries:
            key, rev = unb64(kv["key"]).decode(), int(kv["mod_revision"])
            self._log_keys[key] = rev
            if rev > self.applied:
                self._apply_entry(kv.get("value", ""), rev)
        self._set_leader(leader[0] if leader else None)
        self._members = {unb64(kv["key"]).decode()[len(self.keys.members) :] for kv in members}
        self.applied = max(self.applied, head)
        self.commit_seen = max(self.commit_seen, self.applied)
        self._error = ""

    async def _load_snapshot(self, meta: dict[str, Any], head: int) -> None:
        assert self._loop is not None
        blob = await etcd_keys.read_snapshot(self.http, self.keys, meta, head)
        data = await self._loop.run_in_executor(None, etcd_keys.decode_state, blob)
        self._machine._deserialize(data)
        self.applied = self.snapshot_rev = int(meta["rev"])
        self._since_snapshot = 0
        log.info("loaded the cluster state snapshot of etcd revision %d", self.applied)

    # -- following etcd ------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        first = True
        while not self._closed:
            try:
                if not first:
                    await self._sync()
                first = False
                await self._watch()
            except asyncio.CancelledError:
                raise
            except (EtcdError, OSError, ValueError, KeyError) as exc:
                if self._watching or not self._error:
                    log.warning("cluster store: lost etcd %s: %s", self.http.describe(), exc)
                self._error = str(exc) or type(exc).__name__
            self._watching = False
            # kept-alive connections to an etcd that went away are dead: a write sent on one
            # would end as "unknown outcome" although it never reached etcd
            self.http.close()
            await asyncio.sleep(self.timings.retry)

    async def _watch(self) -> None:
        body = {
            "create_request": {
                "key": b64(self.keys.watched),
                "range_end": prefix_end(self.keys.watched),
                "start_revision": str(self.applied + 1),
            }
        }
        async for message in self.http.stream("/v3/watch", body):
            result = message.get("result") or {}
            if "error" in message:
                raise EtcdError(str(message["error"]))
            if result.get("created"):
                if not self._watching:
                    log.info("cluster store: following etcd %s", self.http.describe())
                self._watching = True
                self._error = ""
                self._watch_ready.set()
                continue
            if result.get("canceled") or result.get("compact_revision"):
                # etcd compacted the revisions this watch needed: catch up by reading
                raise EtcdError(
                    f"watch canceled (compacted at {result.get('compact_revision', '?')})"
                )
            # one txn's events share a revision (and one response): compare each with the
            # revision applied before this response, not with the one before it
            floor = self.applied
            for event in result.get("events") or []:
                self._event(event, floor)

    def _event(self, event: dict[str, Any], floor: int) -> None:
        kv = event["kv"]
        rev = int(kv["mod_revision"])
        if rev <= floor:
            return
        key = unb64(kv["key"]).decode()
        deleted = event.get("type") == "DELETE"
        if key.startswith(self.keys.log):
            if deleted:
                self._log_keys.pop(key, None)
            else:
                self._log_keys[key] = rev
                self._apply_entry(kv.get("value", ""), rev)
        elif key == self.keys.leader:
            self._set_leader(None if deleted else kv)
        elif key.startswith(self.keys.members):
            addr = key[len(self.keys.members) :]
            if deleted:
                self._members.discard(addr)
            else:
                self._members.add(addr)
        self.applied = max(self.applied, rev)
        self.commit_seen = max(self.commit_seen, rev)

    def _apply_entry(self, value: str, rev: int) -> None:
        try:
            cmd = json.loads(unb64(value))
        except ValueError:
            log.error("cluster store: log entry at revision %d is not JSON: skipped", rev)
            return
        self._machine.apply_command(cmd, _doApply=True)
        self._since_snapshot += 1

    def _set_leader(self, kv: dict[str, Any] | None) -> None:
        before = self._leader
        if kv is None:
            self._leader, self._leader_lease = None, 0
            self._wake_campaign.set()
        else:
            self._leader = unb64(kv["value"]).decode()
            self._leader_lease = int(kv.get("lease", 0) or 0)
        if before != self._leader:
            log.info("cluster store: leader %s", self._leader or "(none)")

    def _applied(self, cmd: Mapping[str, Any], result: dict[str, Any]) -> None:
        fut = self._by_cid.pop(str(cmd.get("cid")), None)
        if fut is not None and not fut.done():
            fut.set_result(result)
        if self.on_applied is not None:
            self.on_applied(cmd, result)
