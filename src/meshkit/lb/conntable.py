"""Pure-Python twin of the C connection table (meshkit._fastpath.ConnTable).

The two must behave identically, down to the order of picks, error messages and the Maglev
table; tests/test_conntable.py runs random operation sequences on both and compares every
result. The policy definitions live in src/meshkit/includes/ctable.h; keep the two in step.
"""

from __future__ import annotations

import bisect
import operator
import struct
from socket import AF_INET, AF_INET6, AddressFamily, inet_ntop, inet_pton

FlowKey = tuple[int, str, int, str, int]
POLICIES = ("round_robin", "least_conn", "random", "maglev")

MAGLEV_SIZE = 65537
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MAX_ID = 0xFFFFFFFF
_MAX_WEIGHT = 65535

# Internal flow key: packed addresses, whose length (4 or 16) carries the family, so that
# 1.2.3.4 and ::ffff:1.2.3.4 stay distinct flows as they do in C.
_Key = tuple[int, bytes, int, bytes, int]


def mix64(z: int) -> int:
    """splitmix64's finalizer; the Maglev permutation hashes (h1, h2) are built on it."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    return h


def maglev_permutation(backend_id: int) -> tuple[int, int]:
    """(offset, skip) of a backend's preference list."""
    offset = mix64(backend_id) % MAGLEV_SIZE
    skip = mix64(backend_id ^ _GOLDEN) % (MAGLEV_SIZE - 1) + 1
    return offset, skip


def parse_addr(text: str) -> bytes:
    """Packed address in network order: 4 bytes for IPv4, 16 for IPv6."""
    # inet_pton rather than ipaddress: the C side calls the same libc function, so both
    # accept exactly the same spellings (ipaddress would also take "fe80::1%eth0").
    try:
        return inet_pton(AF_INET, text)
    except (OSError, ValueError):
        pass
    try:
        return inet_pton(AF_INET6, text)
    except (OSError, ValueError):
        raise ValueError(f"invalid IP address {text!r}") from None


def format_addr(packed: bytes) -> str:
    """Canonical text: what Python 3.11's ipaddress .compressed gives (hex groups only)."""
    if len(packed) == 4:
        return inet_ntop(AF_INET, packed)
    groups = struct.unpack("!8H", packed)
    best, best_len, i = -1, 0, 0
    while i < 8:
        if groups[i]:
            i += 1
            continue
        j = i
        while j < 8 and not groups[j]:
            j += 1
        if j - i > best_len:
            best, best_len = i, j - i
        i = j
    if best_len < 2:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best])
    tail = ":".join(f"{g:x}" for g in groups[best + best_len :])
    return f"{head}::{tail}"


def _check_port(port: int) -> int:
    # operator.index everywhere an integer is expected: the C wrapper converts the same way, so
    # both reject floats with TypeError and store True as 1.
    value = operator.index(port)
    if not 0 <= value <= 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return value


def _make_key(proto: int, src: str, sport: int, dst: str, dport: int) -> _Key:
    number = operator.index(proto)
    if number != 6 and number != 17:
        raise ValueError(f"unknown protocol {proto}: expected 6 (TCP) or 17 (UDP)")
    s = parse_addr(src)
    sp = _check_port(sport)
    d = parse_addr(dst)
    dp = _check_port(dport)
    return (number, s, sp, d, dp)


def _flow_key(key: _Key) -> FlowKey:
    return (key[0], format_addr(key[1]), key[2], format_addr(key[3]), key[4])


def _check_weight(weight: int) -> int:
    value = operator.index(weight)
    if not 1 <= value <= _MAX_WEIGHT:
        raise ValueError(f"weight {weight} out of range 1..{_MAX_WEIGHT}")
    return value


class _Backend:
    __slots__ = ("active", "bytes", "current", "id", "total", "up", "weight")

    def __init__(self, backend_id: int, weight: int, up: bool) -> None:
        self.id = backend_id
        self.weight = weight
        self.up = up
        self.current = 0
        self.active = 0
        self.total = 0
        self.bytes = 0


class _Flow:
    __slots__ = ("backend", "last_seen")

    def __init__(self, backend: int, last_seen: float) -> None:
        self.backend = backend
        self.last_seen = last_seen


class PyConnTable:
    """Flow table pinning 5-tuples to backends, with the policy picking new flows."""

    def __init__(self, policy: str = "round_robin", seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
        self._policy = policy
        self._rng = (seed & _MASK64) or _GOLDEN
        self._backends: dict[int, _Backend] = {}
        self._ids: list[int] = []  # ascending: every policy walks backends in id order
        self._flows: dict[_Key, _Flow] = {}
        self._maglev: list[int] = []
        self._maglev_stale = True
        # backend id -> (family, (canonical ip, port)): where it listens (set_address)
        self._addrs: dict[int, tuple[AddressFamily, tuple[str, int]]] = {}

    @property
    def policy(self) -> str:
        return self._policy

    # ---- backends ---------------------------------------------------------------------

    def _get(self, backend_id: int) -> _Backend:
        try:
            return self._backends[operator.index(backend_id)]
        except (KeyError, TypeError):
            raise KeyError(backend_id) from None

    def add_backend(self, backend_id: int, weight: int = 1, up: bool = True) -> None:
        bid = operator.index(backend_id)
        if not 0 <= bid <= _MAX_ID:
            raise ValueError(f"backend id {backend_id} out of range 0..{_MAX_ID}")
        w = _check_weight(weight)
        if bid in self._backends:
            raise ValueError(f"backend {backend_id} already exists")
        up = bool(up)
        self._backends[bid] = _Backend(bid, w, up)
        bisect.insort(self._ids, bid)
        if up:
            self._maglev_stale = True

    def _drop_backend_flows(self, backend_id: int) -> list[FlowKey]:
        keys = [k for k, f in self._flows.items() if f.backend == backend_id]
        for k in keys:
            del self._flows[k]
        self._backends[backend_id].active = 0
        return sorted(_flow_key(k) for k in keys)

    def remove_backend(self, backend_id: int) -> list[FlowKey]:
        b = self._get(backend_id)
        dropped = self._drop_backend_flows(b.id)
        if b.up:
            self._maglev_stale = True
        del self._backends[b.id]
        self._addrs.pop(b.id, None)
        self._ids.remove(b.id)
        return dropped

    def set_up(self, backend_id: int, up: bool) -> list[FlowKey]:
        b = self._get(backend_id)
        up = bool(up)
        dropped = [] if up else self._drop_backend_flows(b.id)
        if b.up != up:
            self._maglev_stale = True
        b.up = up
        return dropped

    def set_weight(self, backend_id: int, weight: int) -> None:
        w = _check_weight(weight)
        b = self._get(backend_id)
        if b.up and b.weight != w:
            self._maglev_stale = True
        b.weight = w

    def is_up(self, backend_id: int) -> bool:
        return self._get(backend_id).up

    def backends(self) -> list[int]:
        return list(self._ids)

    def add_bytes(self, backend_id: int, nbytes: int) -> None:
        n = operator.index(nbytes)
        if not 0 <= n <= _MASK64:
            raise ValueError(f"nbytes {nbytes} out of range 0..{_MASK64}")
        b = self._get(backend_id)
        b.bytes = (b.bytes + n) & _MASK64

    def set_address(self, backend_id: int, ip: str, port: int) -> None:
        """Remember where the backend listens (the relay's serve() connects there)."""
        b = self._get(backend_id)
        packed = parse_addr(ip)
        p = _check_port(port)
        if p == 0:
            raise ValueError(f"port {port} out of range 1..65535")
        family = AF_INET if len(packed) == 4 else AF_INET6
        self._addrs[b.id] = (family, (format_addr(packed), p))

    def address(self, backend_id: int) -> tuple[str, int] | None:
        b = self._get(backend_id)
        entry = self._addrs.get(b.id)
        return None if entry is None else entry[1]

    def _connect_addr(self, backend_id: int) -> tuple[AddressFamily, tuple[str, int]] | None:
        """(family, connect() address) of a backend, for PyRelay.serve."""
        return self._addrs.get(backend_id)

    def stats(self, backend_id: int) -> tuple[int, int, int]:
        b = self._get(backend_id)
        return (b.active, b.total, b.bytes)

    # ---- policies ---------------------------------------------------------------------

    def _up(self) -> list[_Backend]:
        return [b for b in (self._backends[i] for i in self._ids) if b.up]

    @staticmethod
    def _swrr(candidates: list[_Backend]) -> _Backend | None:
        best: _Backend | None = None
        total = 0
        for b in candidates:
            b.current += b.weight
            total += b.weight
            if best is None or b.current > best.current:
                best = b
        if best is not None:
            best.current -= total
        return best

    def _pick_least_conn(self) -> _Backend | None:
        up = self._up()
        least: _Backend | None = None
        for b in up:
            if least is None or b.active * least.weight < least.active * b.weight:
                least = b
        if least is None:
            return None
        la, lw = least.active, least.weight
        return self._swrr([b for b in up if b.active * lw == la * b.weight])

    def _next_random(self) -> int:
        x = self._rng
        x ^= x >> 12
        x ^= (x << 25) & _MASK64
        x ^= x >> 27
        self._rng = x
        return (x * 0x2545F4914F6CDD1D) & _MASK64

    def _pick_random(self) -> _Backend | None:
        up = self._up()
        total = sum(b.weight for b in up)
        if total == 0:
            return None
        r = self._next_random() % total
        for b in up:
            if r < b.weight:
                return b
            r -= b.weight
        raise AssertionError("unreachable: r < total weight")

    def _build_maglev(self) -> None:
        self._maglev_stale = False
        up = self._up()
        if not up:
            self._maglev = []
            return
        m = MAGLEV_SIZE
        perms = [maglev_permutation(b.id) for b in up]
        pos = [p[0] for p in perms]
        skips = [p[1] for p in perms]
        table = [-1] * m
        count = 0
        while True:
            for i, b in enumerate(up):
                p, skip, bid = pos[i], skips[i], b.id
                for _ in range(b.weight):
                    while table[p] >= 0:
                        p += skip
                        if p >= m:
                            p -= m
                    table[p] = bid
                    p += skip
                    if p >= m:
                        p -= m
                    count += 1
                    if count == m:
                        self._maglev = table
                        return
                pos[i] = p

    def _pick_maglev(self, src: bytes) -> _Backend | None:
        if self._maglev_stale:
            self._build_maglev()
        if not self._maglev:
            return None
        return self._backends[self._maglev[fnv1a64(src) % MAGLEV_SIZE]]

    def maglev_table(self) -> list[int]:
        if self._maglev_stale:
            self._build_maglev()
        return list(self._maglev)

    # ---- flows ------------------------------------------------------------------------

    def lookup(
        self, proto: int, src: str, sport: int, dst: str, dport: int, now: float
    ) -> int | None:
        key = _make_key(proto, src, sport, dst, dport)
        now = float(now)
        flow = self._flows.get(key)
        if flow is not None:
            flow.last_seen = now
            return flow.backend
        policy = self._policy
        if policy == "round_robin":
            b = self._swrr(self._up())
        elif policy == "least_conn":
            b = self._pick_least_conn()
        elif policy == "random":
            b = self._pick_random()
        else:
            b = self._pick_maglev(key[1])
        if b is None:
            return None
        self._flows[key] = _Flow(b.id, now)
        b.active += 1
        b.total += 1
        return b.id

    def assign(
        self, proto: int, src: str, sport: int, dst: str, dport: int, backend_id: int, now: float
    ) -> None:
        """Place a new flow on a chosen backend, bypassing the policy (a retry elsewhere)."""
        key = _make_key(proto, src, sport, dst, dport)
        now = float(now)
        if key in self._flows:
            raise ValueError("flow already exists")
        b = self._get(backend_id)
        if not b.up:
            raise ValueError(f"backend {backend_id} is down")
        self._flows[key] = _Flow(b.id, now)
        b.active += 1
        b.total += 1

    def find(self, proto: int, src: str, sport: int, dst: str, dport: int) -> int | None:
        flow = self._flows.get(_make_key(proto, src, sport, dst, dport))
        return None if flow is None else flow.backend

    def release(self, proto: int, src: str, sport: int, dst: str, dport: int) -> int | None:
        flow = self._flows.pop(_make_key(proto, src, sport, dst, dport), None)
        if flow is None:
            return None
        b = self._backends[flow.backend]
        if b.active:
            b.active -= 1
        return flow.backend

    def expire(self, now: float, idle: float) -> list[tuple[FlowKey, int]]:
        cutoff = float(now) - float(idle)
        gone = [(k, f) for k, f in self._flows.items() if f.last_seen <= cutoff]
        for k, f in gone:
            del self._flows[k]
            b = self._backends[f.backend]
            if b.active:
                b.active -= 1
        return sorted((_flow_key(k), f.backend) for k, f in gone)

    def __len__(self) -> int:
        return len(self._flows)

    def __repr__(self) -> str:
        return f"<PyConnTable policy={self._policy} backends={len(self._ids)} flows={len(self)}>"
