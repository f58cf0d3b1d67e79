"""`EtcdStore`: the cluster's replicated log kept in an existing etcd cluster (`--store etcd://`).

The same interface as `RaftStore` (state, submit, is_leader, leader, members, status...) and
the same state machine (`raft.store._StateMachine`, applied without pysyncobj), so the managers
and the CLI do not know which store they run on.

Keys (``P`` = ``/meshkit/<cluster id>/``):

- ``P w/log/<cid>``: one command each (JSON). A manager's write is a put; etcd answering it
  means it is committed. Every manager applies the log in etcd's revision order: it watches
  ``P w/`` from the revision after the last one it applied, and catches up with one
  consistent range read (a txn) after a start or a lost watch.
- ``P w/leader``: the leader's raft address, put with its lease only if the key does not exist
  (a txn on create_revision == 0): leader duties go to whoever holds it. A leader whose lease
  keep-alives stop answering stops acting as leader before etcd can expire its lease.
- ``P w/members/<addr>``: each manager's presence, with its lease (`node ls` Reachable).
- ``P snap/meta`` and ``P snap/<rev>/<n>``: the state at revision ``rev`` (JSON, zlib, cut in
  chunks under etcd's request size limit), written by the leader every `compact_entries`
  commands; the log entries up to ``rev`` are then deleted and ``P snap/trimmed`` says up to
  where. A manager that starts, or whose watch fell behind etcd's compaction, loads the
  snapshot when entries it needs are gone, then applies the log after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.cluster.model import clusterops
from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft.etcd_http import (
    EtcdError,
    EtcdHttp,
    EtcdLost,
    EtcdUnreachable,
    b64,
    prefix_end,
    unb64,
)
from meshkit.cluster.raft.etcd_spec import StoreSpec
from meshkit.cluster.raft.store import (
    NoQuorum,
    StallLog,
    StoreError,
    UnknownOutcome,
    _StateMachine,
    unknown_text,
)

log = logging.getLogger(__name__)

CHUNK = 1_000_000  # bytes of snapshot per key: etcd refuses requests over 1.5 MiB by default
TXN_OPS = 100  # etcd refuses a txn of more than 128 operations by default


@dataclass(frozen=True)
class EtcdTimings:
    lease_ttl: int = 5  # seconds; a dead leader's duties move after at most this
    keepalive: float = 1.5
    commit_timeout: float = 8.0
    request_timeout: float = 3.0
    retry: float = 0.5
    probe: float = 0.05  # the loop-stall probe's period
    compact_entries: int = 500
    compact_seconds: float = 600.0


class EtcdStore:
    """One manager's view of the cluster state, replicated through etcd."""

    def __init__(
        self,
        self_addr: str,
        spec: StoreSpec,
        cluster_id: str,
        timings: EtcdTimings | None = None,
    ) -> None:
        self.self_addr = self_addr
        self.spec = spec
        self.timings = timings or EtcdTimings()
        self.prefix = f"/meshkit/{cluster_id}/"
        self.watched = self.prefix + "w/"
        self.log_prefix = self.watched + "log/"
        self.leader_key = self.watched + "leader"
        self.members_prefix = self.watched + "members/"
        self.snap_prefix = self.prefix + "snap/"
        self.meta_key = self.snap_prefix + "meta"
        self.trimmed_key = self.snap_prefix + "trimmed"
        self.http = EtcdHttp(spec.endpoints, spec.ssl_context())
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
        self._lease = 0
        self._lease_ok_at = float("-inf")
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
        self._snapshotting = False

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state from etcd (snapshot + log), then follow it. StoreError naming the
        endpoints when etcd cannot be reached."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._sync()
        except EtcdError as exc:
            self.http.close()
            raise StoreError(
                f"cannot start the cluster store on etcd {self.spec.url}: {exc}"
            ) from None
        await self._grant_lease()
        gc.freeze()  # as the raft store: the state just loaded lives long
        self._tasks = [
            asyncio.ensure_future(self._watch_loop()),
            asyncio.ensure_future(self._lease_loop()),
            asyncio.ensure_future(self._snapshot_loop()),
        ]
        self._schedule_probe()
        # writes need the watch (their results come through it): start once it runs
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._watch_ready.wait(), self.timings.request_timeout)
        log.info(
            "cluster store: etcd %s, revision %d applied, leader %s",
            self.http.describe(),
            self.applied,
            self._leader or "(none yet)",
        )

    def close(self) -> None:
        self._closed = True
        for fut in self._by_cid.values():
            if not fut.done():
                fut.set_exception(
                    StoreError("the cluster store stopped (this node is no longer a manager)")
                )
        self._by_cid.clear()
        for task in self._tasks:
            task.cancel()
        lease, self._lease = self._lease, 0
        if lease and self._loop is not None and not self._loop.is_closed():
            # Give up the lease at once: another manager takes the leader duties without
            # waiting for it to expire. Best effort: the agent may be stopping.
            task = self._loop.create_task(self._revoke(lease))
            task.add_done_callback(lambda _t: self.http.close())
        else:
            self.http.close()

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(EtcdError):
            await self.http.call("/v3/lease/revoke", {"ID": str(lease)}, timeout=1.0)

    def kick(self) -> None:
        """Nothing to tick: etcd's client calls run as they are made."""

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

    def _range(self, key: str, *, prefix: bool = False, **extra: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(key), **extra}
        if prefix:
            req["range_end"] = prefix_end(key)
        return {"request_range": req}

    async def _sync(self) -> None:
        """Catch up: one consistent read of everything under the prefix, then the snapshot if
        log entries this replica needs were trimmed. Afterwards `applied` is etcd's revision."""
        answer = await self.http.call(
            "/v3/kv/txn",
            {
                "success": [
                    self._range(self.leader_key),
                    self._range(self.members_prefix, prefix=True),
                    self._range(self.meta_key),
                    self._range(self.trimmed_key),
                    self._range(
                        self.log_prefix, prefix=True, sort_order="ASCEND", sort_target="MOD"
                    ),
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
        self._members = {unb64(kv["key"]).decode()[len(self.members_prefix) :] for kv in members}
        self.applied = max(self.applied, head)
        self.commit_seen = max(self.commit_seen, self.applied)
        self._error = ""

    async def _load_snapshot(self, meta: dict[str, Any], head: int) -> None:
        rev = int(meta["rev"])
        answer = await self.http.call(
            "/v3/kv/range",
            {
                "key": b64(f"{self.snap_prefix}{rev:020d}/"),
                "range_end": prefix_end(f"{self.snap_prefix}{rev:020d}/"),
                "revision": str(head),
            },
            timeout=60.0,
        )
        chunks = [unb64(kv["value"]) for kv in answer.get("kvs", [])]
        if len(chunks) != int(meta["chunks"]):
            raise EtcdError(f"the snapshot at revision {rev} is incomplete")
        assert self._loop is not None
        blob = b"".join(chunks)
        data = await self._loop.run_in_executor(None, lambda: json.loads(zlib.decompress(blob)))
        self._machine._deserialize(data)
        self.applied = rev
        self.snapshot_rev = rev
        self._since_snapshot = 0
        log.info("loaded the cluster state snapshot of etcd revision %d", rev)

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
            await asyncio.sleep(self.timings.retry)

    async def _watch(self) -> None:
        body = {
            "create_request": {
                "key": b64(self.watched),
                "range_end": prefix_end(self.watched),
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
            for event in result.get("events") or []:
                self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        kv = event["kv"]
        rev = int(kv["mod_revision"])
        if rev <= self.applied:
            return
        key = unb64(kv["key"]).decode()
        deleted = event.get("type") == "DELETE"
        if key.startswith(self.log_prefix):
            if deleted:
                self._log_keys.pop(key, None)
            else:
                self._log_keys[key] = rev
                self._apply_entry(kv.get("value", ""), rev)
        elif key == self.leader_key:
            self._set_leader(None if deleted else kv)
        elif key.startswith(self.members_prefix):
            addr = key[len(self.members_prefix) :]
            if deleted:
                self._members.discard(addr)
            else:
                self._members.add(addr)
        self.applied = rev
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

    # -- the lease: presence and leadership ----------------------------------------------------

    async def _grant_lease(self) -> None:
        t = self.timings
        answer = await self.http.call(
            "/v3/lease/grant", {"TTL": str(t.lease_ttl)}, timeout=t.request_timeout
        )
        started = time.monotonic()
        self._lease = int(answer["ID"])
        self._lease_ok_at = started
        # A manager started again while its old lease lives: its old keys (the leader key,
        # perhaps) would keep the duties with a lease nobody renews until it expires.
        old = await self.http.call(
            "/v3/kv/range",
            {"key": b64(self.members_prefix + self.self_addr)},
            timeout=t.request_timeout,
        )
        stale = {int(kv.get("lease", 0) or 0) for kv in old.get("kvs", [])}
        if self._leader == self.self_addr:
            stale.add(self._leader_lease)
        for lease in stale - {0, self._lease}:
            await self._revoke(lease)
        await self.http.call(
            "/v3/kv/put",
            {
                "key": b64(self.members_prefix + self.self_addr),
                "value": b64(json.dumps({"since": time.time()})),
                "lease": str(self._lease),
            },
            timeout=t.request_timeout,
        )

    async def _lease_loop(self) -> None:
        t = self.timings
        while not self._closed:
            started = time.monotonic()
            try:
                if not self._lease:
                    await self._grant_lease()
                else:
                    answer = await self.http.call(
                        "/v3/lease/keepalive", {"ID": str(self._lease)}, timeout=t.request_timeout
                    )
                    if int((answer.get("result") or {}).get("TTL", 0) or 0) <= 0:
                        log.warning("cluster store: this manager's etcd lease expired")
                        self._lease = 0
                        continue
                    self._lease_ok_at = started
                if self._leader is None and self._lease:
                    await self._campaign()
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                self._error = str(exc)
            self._wake_campaign.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_campaign.wait(), t.keepalive)

    async def _campaign(self) -> None:
        key = b64(self.leader_key)
        answer = await self.http.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                "success": [
                    {
                        "request_put": {
                            "key": key,
                            "value": b64(self.self_addr),
                            "lease": str(self._lease),
                        }
                    }
                ],
            },
            timeout=self.timings.request_timeout,
        )
        if answer.get("succeeded"):
            log.info("cluster store: this manager holds the leader key")

    @property
    def _lease_fresh(self) -> bool:
        # Stop acting as leader a keep-alive period before etcd could expire the lease.
        t = self.timings
        return time.monotonic() - self._lease_ok_at < t.lease_ttl - t.keepalive

    # -- reads ---------------------------------------------------------------------------------

    @property
    def state(self) -> cstate.ClusterState:
        return self._machine.state

    @property
    def healthy(self) -> bool:
        return self._watching and not self._closed

    @property
    def is_leader(self) -> bool:
        return (
            self._leader == self.self_addr
            and self._leader_lease == self._lease
            and self._lease != 0
            and self._lease_fresh
        )

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def members(self) -> list[str]:
        return sorted(self._members | {self.self_addr})

    def connected(self, addr: str) -> bool:
        return addr == self.self_addr or addr in self._members

    def reachable(self) -> tuple[int, int]:
        return (1 if self.healthy else 0), 1

    @property
    def has_quorum(self) -> bool:
        return self.healthy

    def no_quorum(self) -> NoQuorum:
        why = self._error or self.http.last_error or "the watch is not running"
        return NoQuorum(f"the cluster store (etcd {self.http.describe()}) is unreachable: {why}")

    def status(self) -> dict[str, Any]:
        return {
            "store": "etcd",
            "store_url": self.spec.url,
            "endpoints": self.http.describe(),
            "healthy": self.healthy,
            "error": "" if self.healthy else (self._error or self.http.last_error),
            "self": self.self_addr,
            "leader": self._leader,
            "is_leader": self.is_leader,
            "members": self.members,
            "reachable": 1 if self.healthy else 0,
            "has_quorum": self.healthy,
            "commit_index": self.commit_seen,
            "last_applied": self.applied,
            "snapshot_revision": self.snapshot_rev,
            "log_entries": len(self._log_keys),
            "term": 0,
            "slowest_tick_ms": round(self.slowest_tick * 1000, 3),
            **self.stalls.status(),
        }

    # -- writes --------------------------------------------------------------------------------

    async def submit(self, cmd: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Commit one command in etcd and apply it; its result, or StoreError/NoQuorum/
        UnknownOutcome/CommandError as `RaftStore.submit`."""
        if self._closed or self._loop is None:
            raise StoreError("the cluster store is not running")
        deadline = time.monotonic() + (timeout or self.timings.commit_timeout)
        cmd = {**cmd, "cid": os.urandom(8).hex()}
        op = str(cmd.get("op"))
        try:
            value = json.dumps(cmd)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"cannot store the {op} command: {exc}") from None
        idempotent = (
            op in cstate.IDEMPOTENT or op in clusterops.IDEMPOTENT or bool(cmd.get("request_id"))
        )
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._by_cid[cmd["cid"]] = fut
        try:
            while True:
                if not self.healthy:
                    raise self.no_quorum()
                remaining = deadline - time.monotonic()
                try:
                    answer = await self.http.call(
                        "/v3/kv/put",
                        {"key": b64(self.log_prefix + cmd["cid"]), "value": b64(value)},
                        timeout=max(0.1, min(remaining, self.timings.request_timeout)),
                    )
                    break
                except EtcdUnreachable as exc:
                    self._error = str(exc)
                    raise NoQuorum(f"the cluster store is unreachable: {exc}") from None
                except EtcdLost as exc:
                    # The same key again is harmless: a second put of one cid is applied
                    # once (the state machine's result for it is the first one's).
                    if idempotent and time.monotonic() + self.timings.retry < deadline:
                        await asyncio.sleep(self.timings.retry)
                        continue
                    raise UnknownOutcome(unknown_text(str(exc), op)) from None
                except EtcdError as exc:
                    raise StoreError(f"the cluster store refused the write: {exc}") from None
            rev = int(answer["header"]["revision"])
            self.commit_seen = max(self.commit_seen, rev)
            try:
                result = await asyncio.wait_for(
                    asyncio.shield(fut), max(0.1, deadline - time.monotonic())
                )
            except asyncio.TimeoutError:
                raise UnknownOutcome(
                    unknown_text(
                        f"{op} is committed in etcd (revision {rev}) but this manager has not "
                        "applied it yet",
                        op,
                    )
                ) from None
        finally:
            self._by_cid.pop(cmd["cid"], None)
        if "error" in result:
            if result.get("kind") == "NodeNotFound":
                raise cstate.NodeNotFound(result["error"])
            raise cstate.CommandError(result["error"])
        return dict(result.get("ok") or {})

    def reconcile_members(self, desired: set[str]) -> str | None:
        """Membership is each manager's lease in etcd: nothing to change here. A leader that
        must go gives up the leader key so another manager takes the duties."""
        if self.is_leader and self.self_addr not in desired and self._loop is not None:
            self._loop.create_task(self._resign())
            return "resign"
        return None

    async def _resign(self) -> None:
        key = b64(self.leader_key)
        with contextlib.suppress(EtcdError):
            await self.http.call(
                "/v3/kv/txn",
                {
                    "compare": [{"key": key, "target": "LEASE", "lease": str(self._lease)}],
                    "success": [{"request_delete_range": {"key": key}}],
                },
                timeout=self.timings.request_timeout,
            )

    # -- snapshots -----------------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        t = self.timings
        while not self._closed:
            await asyncio.sleep(1.0)
            due = self._since_snapshot >= t.compact_entries or (
                self._since_snapshot > 0
                and time.monotonic() - self._snapshot_at > t.compact_seconds
            )
            if not (due and self.is_leader and self.healthy):
                continue
            try:
                await self.write_snapshot()
            except asyncio.CancelledError:
                raise
            except (EtcdError, RuntimeError, ValueError) as exc:
                log.warning("cluster store: snapshot not written: %s", exc)
                self._snapshot_at = time.monotonic()

    async def write_snapshot(self) -> int:
        """Write the state as of the applied revision, then trim the log up to it."""
        assert self._loop is not None
        rev = self.applied
        data = self._machine.state.to_dict()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        blob = await self._loop.run_in_executor(
            None, lambda: zlib.compress(json.dumps(data).encode(), 3)
        )
        base = f"{self.snap_prefix}{rev:020d}/"
        chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)] or [b""]
        for n, chunk in enumerate(chunks):
            await self.http.call(
                "/v3/kv/put", {"key": b64(f"{base}{n:06d}"), "value": b64(chunk)}, timeout=30.0
            )
        meta = {"rev": rev, "chunks": len(chunks), "bytes": len(blob), "at": time.time()}
        old = self.snapshot_rev
        await self.http.call(
            "/v3/kv/put", {"key": b64(self.meta_key), "value": b64(json.dumps(meta))}
        )
        self.snapshot_rev = rev
        if old and old != rev:
            old_base = f"{self.snap_prefix}{old:020d}/"
            await self.http.call(
                "/v3/kv/deleterange", {"key": b64(old_base), "range_end": prefix_end(old_base)}
            )
        await self._trim(rev)
        log.info("cluster store: snapshot of revision %d written (%d bytes)", rev, len(blob))
        return rev

    async def _trim(self, rev: int) -> None:
        gone = [key for key, r in self._log_keys.items() if r <= rev]
        for i in range(0, len(gone), TXN_OPS):
            batch = gone[i : i + TXN_OPS]
            upto = max(self._log_keys.get(k, 0) for k in batch)
            ops: list[dict[str, Any]] = [{"request_delete_range": {"key": b64(k)}} for k in batch]
            ops.append({"request_put": {"key": b64(self.trimmed_key), "value": b64(str(upto))}})
            await self.http.call("/v3/kv/txn", {"success": ops}, timeout=30.0)
