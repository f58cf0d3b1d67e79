"""Picking an upstream per request (the web proxy's policies), sans-IO, on the connection table.

The proxy's policies are the shared ones of meshkit.lb.ConnTable, so the web proxy balances
exactly as the ingress does:

    random, least_conn, round_robin   the table's own picks
    ip_hash, uri_hash, header NAME    the table's Maglev consistent hashing, keyed by the client
                                      IP / the URI / the header's value (`header` falls back to
                                      round robin when the request lacks the header)
    first                             the first upstream (in file order) that is up and under
                                      max_conns

Each request in flight is one flow of the table (released when the exchange ends), so
least_conn sees the requests in flight; with a single upstream there is no choice to make
and no flow (only the up/down state and max_conns apply). A Picker also holds each
upstream's up/down state: down when an active health check says so, or (passive checks,
when fail_timeout > 0) while it has `max_fails` failures younger than fail_timeout. Time
comes in as `now` arguments.
"""

from __future__ import annotations

import hashlib
import socket

from meshkit.lb import ConnTable, PyConnTable

__all__ = ["HASH_POLICIES", "POLICIES", "Picker", "Ticket"]

POLICIES = ("random", "least_conn", "round_robin", "ip_hash", "first", "uri_hash", "header")
HASH_POLICIES = ("ip_hash", "uri_hash", "header")

_TABLE_POLICY = {
    "random": "random",
    "least_conn": "least_conn",
    "round_robin": "round_robin",
    "ip_hash": "maglev",
    "uri_hash": "maglev",
    "header": "maglev",
    "first": "round_robin",  # unused for picking: `first` scans in order itself
}
_TCP = 6
_PLAIN_SRC = "::1"  # the source of non-hashed flows: they differ by their ports only
_DST = "::"


def _hash_source(key: str) -> str:
    # The table's Maglev hashes a flow's source address, so a request's key (client IP, URI,
    # header value) becomes a synthetic 16-byte source address: one hashing code path shared
    # with the ingress, and a digest spreads similar keys (/a, /b) evenly over the ring.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    return socket.inet_ntop(socket.AF_INET6, digest)


class Ticket:
    """One request's hold on an upstream (its flow in the table; no table for a picker of
    one upstream)."""

    __slots__ = ("done", "index", "seq", "src", "table")

    def __init__(self, index: int, src: str, seq: int, table: PyConnTable | None) -> None:
        self.index = index
        self.src = src
        self.seq = seq
        self.table = table
        self.done = False


class Picker:
    """Per-request upstream choice over `count` upstreams (indexes 0..count-1, file order)."""

    __slots__ = (
        "_active",
        "_fails",
        "_fallback",
        "_healthy",
        "_next_expiry",
        "_seq",
        "_table",
        "count",
        "fail_timeout",
        "max_conns",
        "max_fails",
        "policy",
    )

    def __init__(
        self,
        count: int,
        policy: str = "random",
        *,
        max_conns: int = 0,
        max_fails: int = 1,
        fail_timeout: float = 0.0,
        seed: int = 0,
        table: type[PyConnTable] = ConnTable,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if count < 1:
            raise ValueError("a picker needs at least one upstream")
        self.count = count
        self.policy = policy
        self.max_conns = max_conns  # 0: no limit
        self.max_fails = max(1, max_fails)
        self.fail_timeout = fail_timeout  # 0: passive checks off
        self._table = table(_TABLE_POLICY[policy], seed)
        # `header` without the header: round robin, on a table of its own (a Maglev table
        # cannot pick without a key)
        self._fallback = table("round_robin", seed) if policy == "header" else None
        for i in range(count):
            self._table.add_backend(i)
            if self._fallback is not None:
                self._fallback.add_backend(i)
        self._active = [0] * count
        self._healthy = [True] * count
        self._fails: list[list[float]] = [[] for _ in range(count)]  # expiry times
        self._next_expiry = float("inf")
        self._seq = 0

    # ---- state --------------------------------------------------------------------------

    def is_up(self, index: int) -> bool:
        return bool(self._table.is_up(index))

    def in_flight(self, index: int) -> int:
        return self._active[index]

    def set_healthy(self, index: int, healthy: bool) -> None:
        """What the active health check found."""
        self._healthy[index] = healthy
        self._update(index)

    def fail(self, index: int, now: float) -> None:
        """A passive failure of `index` (connect refused, timed out, broken exchange)."""
        if self.fail_timeout <= 0:
            return
        until = now + self.fail_timeout
        self._fails[index].append(until)
        self._next_expiry = min(self._next_expiry, until)
        self._update(index)

    def tick(self, now: float) -> None:
        """Forget passive failures older than fail_timeout (upstreams may come back)."""
        if now < self._next_expiry:
            return
        nxt = float("inf")
        for i, fails in enumerate(self._fails):
            if fails:
                kept = [t for t in fails if t > now]
                if len(kept) != len(fails):
                    self._fails[i] = kept
                    self._update(i)
                if kept:
                    nxt = min(nxt, min(kept))
        self._next_expiry = nxt

    def _update(self, index: int) -> None:
        up = self._healthy[index] and len(self._fails[index]) < self.max_fails
        if bool(self._table.is_up(index)) != up:
            # set_up(False) drops the table's flows of that upstream; our own in-flight counts
            # stay right, and release() of a dropped flow is a no-op in the table.
            self._table.set_up(index, up)
            if self._fallback is not None:
                self._fallback.set_up(index, up)

    def _available(self, index: int, exclude: frozenset[int] | set[int]) -> bool:
        return (
            index not in exclude
            and bool(self._table.is_up(index))
            and (self.max_conns <= 0 or self._active[index] < self.max_conns)
        )

    # ---- picking ------------------------------------------------------------------------

    def pick(
        self,
        now: float,
        client_ip: str = "",
        uri: str = "",
        header_value: str | None = None,
        exclude: frozenset[int] | set[int] = frozenset(),
    ) -> Ticket | None:
        """Choose an upstream for one request (Ticket.index), or None when none is up, under
        max_conns and not in `exclude`. Give the ticket back with release()."""
        if now >= self._next_expiry:
            self.tick(now)
        if self.count == 1:
            # one upstream: every policy picks it when it is available (no flow needed)
            if not self._available(0, exclude):
                return None
            self._active[0] += 1
            return Ticket(0, "", 0, None)
        seq = self._seq = (self._seq + 1) & 0xFFFFFFFF
        sport, dport = seq & 0xFFFF, seq >> 16
        policy = self.policy
        table = self._table
        src = _PLAIN_SRC
        if policy == "first":
            for i in range(self.count):
                if self._available(i, exclude):
                    table.assign(_TCP, src, sport, _DST, dport, i, now)
                    self._active[i] += 1
                    return Ticket(i, src, seq, table)
            return None
        if policy == "ip_hash":
            src = _hash_source(client_ip)
        elif policy == "uri_hash":
            src = _hash_source(uri)
        elif policy == "header":
            if header_value:
                src = _hash_source(header_value)
            else:
                assert self._fallback is not None
                table = self._fallback
        chosen = table.lookup(_TCP, src, sport, _DST, dport, now)
        if chosen is None:
            return None
        if not self._available(chosen, exclude):
            # Taken, full or excluded: the next available one after it, in order (what Caddy
            # v1's hash policies do too), placed on the table by hand.
            table.release(_TCP, src, sport, _DST, dport)
            for step in range(1, self.count):
                i = (chosen + step) % self.count
                if self._available(i, exclude):
                    chosen = i
                    break
            else:
                return None
            table.assign(_TCP, src, sport, _DST, dport, chosen, now)
        self._active[chosen] += 1
        return Ticket(chosen, src, seq, table)

    def release(self, ticket: Ticket) -> None:
        """The request holding `ticket` is over (whatever its outcome). Idempotent."""
        if ticket.done:
            return
        ticket.done = True
        index = ticket.index
        if self._active[index] > 0:
            self._active[index] -= 1
        if ticket.table is None:
            return
        seq = ticket.seq
        ticket.table.release(_TCP, ticket.src, seq & 0xFFFF, _DST, seq >> 16)
