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
from typing import Any

from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft import etcd_keys
from meshkit.cluster.raft.etcd_http import (
    EtcdError,
    EtcdLost,
    EtcdUnreachable,
    b64,
)
from meshkit.cluster.raft.etcd_replica import EtcdReplica
from meshkit.cluster.raft.store import (
    NoQuorum,
    StoreError,
    UnknownOutcome,
    check_gate,
    resendable,
    unknown_text,
)

log = logging.getLogger(__name__)


class EtcdStore(EtcdReplica):
    """One manager's view of the cluster state, replicated through etcd."""

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state from etcd (snapshot + log), then follow it. StoreError naming the
        endpoints when etcd cannot be reached."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._sync()
            await self._grant()
        except EtcdError as exc:
            self.http.close()
            raise StoreError(
                f"cannot start the cluster store on etcd {self.spec.url}: {exc}"
            ) from None
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
        lease, self.lease.id = self.lease.id, 0
        if lease and self._loop is not None and not self._loop.is_closed():
            # Give up the lease at once: another manager takes the leader duties without
            # waiting for it to expire. Best effort: the agent may be stopping.
            task = self._loop.create_task(self.lease.revoke(lease))
            task.add_done_callback(lambda _t: self.http.close())
        else:
            self.http.close()

    def kick(self) -> None:
        """Nothing to tick: etcd's client calls run as they are made."""

    # -- the lease: presence and leadership ----------------------------------------------------

    async def _grant(self) -> None:
        # this manager's earlier run may still hold the leader key with a lease of its own
        mine = self._leader == self.self_addr and self._leader_lease != self.lease.id
        await self.lease.grant({self._leader_lease} if mine else set())

    async def _lease_loop(self) -> None:
        while not self._closed:
            try:
                if not self.lease.id:
                    await self._grant()
                elif not await self.lease.keepalive():
                    continue
                if self._leader is None and self.lease.id:
                    await self.lease.campaign()
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                self._error = str(exc)
            self._wake_campaign.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_campaign.wait(), self.timings.keepalive)

    # -- reads ---------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._watching and not self._closed

    @property
    def is_leader(self) -> bool:
        return (
            self._leader == self.self_addr
            and self._leader_lease == self.lease.id
            and self.lease.fresh
        )

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def members(self) -> list[str]:
        return sorted(self._members | {self.self_addr})

    @property
    def released(self) -> bool:
        """A manager that committed its own leave is let go once it no longer leads: its
        membership is its lease, revoked when the store closes, not a list the leader edits."""
        return not self.is_leader

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
            "lease_ttl": self.timings.lease_ttl,
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
        check_gate(self.state, cmd)
        cmd = {**cmd, "cid": os.urandom(8).hex()}
        op = str(cmd.get("op"))
        try:
            value = json.dumps(cmd)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"cannot store the {op} command: {exc}") from None
        idempotent = resendable(cmd)
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._by_cid[cmd["cid"]] = fut
        try:
            while True:
                if not self.healthy:
                    raise self.no_quorum()
                remaining = deadline - time.monotonic()
                put = {"key": b64(self.keys.log + cmd["cid"]), "value": b64(value)}
                # A manager that acts as leader writes only while etcd still has its lease on
                # the leader key (fencing): a leader cut off from etcd, whose lease expired
                # before it noticed, must not add commands (plans, say) next to its successor's.
                fenced = self.is_leader
                try:
                    if fenced:
                        answer = await self.http.call(
                            "/v3/kv/txn",
                            {
                                "compare": [
                                    {
                                        "key": b64(self.keys.leader),
                                        "target": "LEASE",
                                        "lease": str(self.lease.id),
                                    }
                                ],
                                "success": [{"request_put": put}],
                            },
                            timeout=max(0.1, min(remaining, self.timings.request_timeout)),
                        )
                    else:
                        answer = await self.http.call(
                            "/v3/kv/put",
                            put,
                            timeout=max(0.1, min(remaining, self.timings.request_timeout)),
                        )
                    if fenced and not answer.get("succeeded"):
                        self._leader = None
                        raise NoQuorum(
                            "this manager lost the cluster store's leader key before the "
                            f"{op} write; nothing was written: try again"
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
            self._loop.create_task(self.lease.resign())
            return "resign"
        return None

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
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        # as the raft store at each dump: the state lives long, so no full collection walks
        # it again on the loop (and the child's copy-on-write pages stay shared)
        gc.freeze()
        pid, fd = etcd_keys.encode_in_child(self._machine.state)
        blob = await self._loop.run_in_executor(None, etcd_keys.collect, pid, fd)
        await etcd_keys.write_snapshot(self.http, self.keys, blob, rev, self.snapshot_rev)
        self.snapshot_rev = rev
        await etcd_keys.trim_log(self.http, self.keys, self._log_keys, rev)
        log.info("cluster store: snapshot of revision %d written (%d bytes)", rev, len(blob))
        return rev
