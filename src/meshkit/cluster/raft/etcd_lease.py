"""One manager's etcd lease: its presence key (`node ls` Reachable) and its claim on the leader
key (a txn that puts it only if it does not exist), for meshkit.cluster.raft.etcd_store."""

from __future__ import annotations

import contextlib
import json
import logging
import time

from meshkit.cluster.raft.etcd_http import EtcdError, EtcdHttp, b64
from meshkit.cluster.raft.etcd_keys import Keys

log = logging.getLogger(__name__)


class Lease:
    def __init__(
        self, http: EtcdHttp, keys: Keys, self_addr: str, ttl: int, period: float, timeout: float
    ) -> None:
        self.http = http
        self.keys = keys
        self.self_addr = self_addr
        self.ttl = ttl
        self.period = period  # between keep-alives
        self.timeout = timeout
        self.id = 0
        self.ok_at = float("-inf")  # when the last grant or keep-alive that succeeded was sent

    @property
    def fresh(self) -> bool:
        """Held for sure: a leader stops acting as one a keep-alive period before etcd could
        expire its lease."""
        return self.id != 0 and time.monotonic() - self.ok_at < self.ttl - self.period

    async def grant(self, stale: set[int]) -> None:
        """A new lease and the presence key on it. `stale`: leases of this manager's earlier
        run (its old leader key, say), revoked so their keys go now, not at their expiry."""
        started = time.monotonic()
        answer = await self.http.call(
            "/v3/lease/grant", {"TTL": str(self.ttl)}, timeout=self.timeout
        )
        self.id, self.ok_at = int(answer["ID"]), started
        me = b64(self.keys.members + self.self_addr)
        old = await self.http.call("/v3/kv/range", {"key": me}, timeout=self.timeout)
        stale = stale | {int(kv.get("lease", 0) or 0) for kv in old.get("kvs", [])}
        for lease in stale - {0, self.id}:
            await self.revoke(lease)
        value = b64(json.dumps({"since": time.time()}))
        await self.http.call(
            "/v3/kv/put", {"key": me, "value": value, "lease": str(self.id)}, timeout=self.timeout
        )

    async def keepalive(self) -> bool:
        """False when etcd no longer knows the lease (it expired)."""
        started = time.monotonic()
        answer = await self.http.call(
            "/v3/lease/keepalive", {"ID": str(self.id)}, timeout=self.timeout
        )
        if int((answer.get("result") or {}).get("TTL", 0) or 0) <= 0:
            log.warning("cluster store: this manager's etcd lease expired")
            self.id = 0
            return False
        self.ok_at = started
        return True

    async def campaign(self) -> bool:
        key = b64(self.keys.leader)
        put = {"key": key, "value": b64(self.self_addr), "lease": str(self.id)}
        answer = await self.http.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": put}],
            },
            timeout=self.timeout,
        )
        if answer.get("succeeded"):
            log.info("cluster store: this manager holds the leader key")
            return True
        return False

    async def resign(self) -> None:
        key = b64(self.keys.leader)
        with contextlib.suppress(EtcdError):
            await self.http.call(
                "/v3/kv/txn",
                {
                    "compare": [{"key": key, "target": "LEASE", "lease": str(self.id)}],
                    "success": [{"request_delete_range": {"key": key}}],
                },
                timeout=self.timeout,
            )

    async def revoke(self, lease: int) -> None:
        with contextlib.suppress(EtcdError):
            await self.http.call("/v3/lease/revoke", {"ID": str(lease)}, timeout=1.0)
