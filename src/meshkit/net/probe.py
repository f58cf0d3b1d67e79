"""Overlay probes (sans-IO): the probe datagram and the per-peer probing state machine.

Every node's agent answers and sends small UDP datagrams between node endpoint IPs inside
each overlay network, so a probe from node A to node B crosses the encapsulated (VXLAN) path.
This module holds no I/O: ``encode``/``decode`` turn a ``Probe`` into bytes and back, and
``PeerProbe`` decides, for one peer on one network, what to send when and what the answers
(or their absence) say. ``meshkit.net.probe_io`` is the asyncio shell around it.

The datagram (network byte order)::

    magic "MKPR" | version u8 | kind u8 | size u16 | seq u32 | sent f64 | id_len u8 | id | padding

``size`` is the IP packet size the datagram makes (UDP payload + 28 bytes of IPv4 and UDP
headers); the payload is zero-padded up to it, so a probe of size N tests whether N-byte
packets pass. A reply echoes the request's seq, size and send time with the replier's node id.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

PROBE_PORT = 7948
MAGIC = b"MKPR"
VERSION = 1
REQUEST = 1
REPLY = 2
IP_UDP_OVERHEAD = 28  # IPv4 header 20 + UDP header 8: a probe's size counts both
MAX_SENDER_BYTES = 64
MAX_SIZE = 65535

_HEAD = struct.Struct("!4sBBHIdB")
HEADER_BYTES = _HEAD.size

# Losses in a row after which a peer counts as unreachable (with the defaults, 6-8 s).
LOST_TO_UNREACHABLE = 3
# A failing MTU probe size is tried this many times before it counts as too big, so one
# random loss does not shrink the path MTU.
MTU_TRIES = 2
# The MTU search is redone this often even when nothing changed (routes do change).
MTU_RESEARCH_EVERY = 300.0


@dataclass(frozen=True)
class Probe:
    """One probe datagram, decoded."""

    kind: int  # REQUEST or REPLY
    seq: int
    sender: str  # the node id of whoever sent this datagram
    sent: float  # the requester's clock when the request left (echoed in the reply)
    size: int  # the IP packet size this datagram makes


def smallest_size(sender: str) -> int:
    """The IP packet size of a probe from ``sender`` with no padding."""
    return IP_UDP_OVERHEAD + HEADER_BYTES + len(sender.encode())


def encode(kind: int, seq: int, sender: str, sent: float, size: int = 0) -> bytes:
    """The datagram for a probe padded to an IP packet of ``size`` bytes (at least the
    smallest a probe can be); ValueError for values that cannot be put on the wire."""
    if kind not in (REQUEST, REPLY):
        raise ValueError(f"probe kind {kind} is neither request ({REQUEST}) nor reply ({REPLY})")
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"probe seq {seq} does not fit 32 bits")
    ident = sender.encode()
    if len(ident) > MAX_SENDER_BYTES:
        raise ValueError(f"probe sender id is {len(ident)} bytes, at most {MAX_SENDER_BYTES}")
    if not math.isfinite(sent):
        raise ValueError(f"probe send time {sent} is not a finite number")
    size = max(size, smallest_size(sender))
    if size > MAX_SIZE:
        raise ValueError(f"probe size {size} is over the IPv4 limit {MAX_SIZE}")
    head = _HEAD.pack(MAGIC, VERSION, kind, size, seq, sent, len(ident)) + ident
    return head + bytes(size - IP_UDP_OVERHEAD - len(head))


def decode(data: bytes) -> Probe | None:
    """The probe in ``data``, or None when it is not a well-formed probe of this version."""
    if len(data) < HEADER_BYTES:
        return None
    magic, version, kind, size, seq, sent, id_len = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind not in (REQUEST, REPLY):
        return None
    if id_len > MAX_SENDER_BYTES or len(data) < HEADER_BYTES + id_len:
        return None
    # A datagram whose length disagrees with its size field was cut or padded on the way.
    if size != len(data) + IP_UDP_OVERHEAD or not math.isfinite(sent):
        return None
    try:
        sender = data[HEADER_BYTES : HEADER_BYTES + id_len].decode()
    except UnicodeDecodeError:
        return None
    return Probe(kind, seq, sender, sent, size)


def reply_to(request: Probe, own_id: str) -> bytes:
    """The answer to ``request``: same seq, size and send time, our node id."""
    return encode(REPLY, request.seq, own_id, request.sent, request.size)


class Outgoing(NamedTuple):
    """A datagram to send: to ``addr`` (the peer's probe port), with DF set when ``df``."""

    addr: str
    payload: bytes
    df: bool


@dataclass(frozen=True)
class ProbeResult:
    """What probing one peer found, as of ``now``."""

    reachable: bool | None  # None: no verdict yet (not probed, or too few answers lost)
    last_ok: float | None  # when the last answer came
    rtt_ms: float | None  # round trip of the last answered reachability probe
    path_mtu: int | None  # the largest IP packet size answered; None until the search ends
    lost: int  # reachability probes lost in a row
    since: float | None  # when ``reachable`` last changed


@dataclass
class _Pending:
    sent: float
    size: int
    mtu: bool  # an MTU probe (its loss may be the size, so it does not count as a loss)


@dataclass
class _MtuSearch:
    """A binary search for the largest size in [lo, hi) that passes: lo is known to pass
    (or is the first candidate when nothing is known), hi is the smallest known to fail."""

    lo: int
    hi: int
    known_lo: bool
    candidate: int
    tries: int = 0


class PeerProbe:
    """Probing of one peer over one network; see the module docstring.

    ``due(now)`` says what to send, ``on_reply``/``on_send_failed`` feed back what happened,
    ``result(now)`` says what is known. Times are seconds on any monotonic clock. Sizes are
    IP packet sizes; ``max_size`` is the overlay MTU, the largest size the search tries.
    """

    def __init__(
        self,
        peer_id: str,
        peer_addr: str,
        *,
        interval: float = 2.0,
        timeout: float = 1.0,
        max_size: int,
        min_size: int = 576,
        sender_id: str = "",
    ) -> None:
        """Check the settings: a bad one would make the search or the timing meaningless."""
        if len(sender_id.encode()) > MAX_SENDER_BYTES:
            raise ValueError(f"probe sender id {sender_id!r} is over {MAX_SENDER_BYTES} bytes")
        floor = smallest_size(sender_id)
        if not floor <= min_size <= max_size <= MAX_SIZE:
            raise ValueError(
                f"probe sizes for peer {peer_id}: need {floor} <= min_size ({min_size}) "
                f"<= max_size ({max_size}) <= {MAX_SIZE}"
            )
        if not (interval > 0 and timeout > 0):
            raise ValueError(
                f"probe timing for peer {peer_id}: interval ({interval}) and timeout "
                f"({timeout}) must be positive"
            )
        self.peer_id = peer_id
        self.peer_addr = peer_addr
        self.interval = interval
        self.timeout = timeout
        self.max_size = max_size
        self.min_size = min_size
        self.sender_id = sender_id
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._next_reach: float | None = None
        self._reachable: bool | None = None
        self._since: float | None = None
        self._lost = 0
        self._last_ok: float | None = None
        self._rtt_ms: float | None = None
        self._path_mtu: int | None = None
        self._search: _MtuSearch | None = None
        self._next_search: float | None = None

    # ---------------------------------------------------------------- events

    def due(self, now: float) -> list[Outgoing]:
        """What to send now: a reachability probe each interval, and the next MTU probe
        while a search runs and the peer answers."""
        self._expire(now)
        out: list[Outgoing] = []
        if self._next_reach is None or now >= self._next_reach:
            self._next_reach = now + self.interval
            out.append(self._send(now, smallest_size(self.sender_id), mtu=False))
        if (
            self._reachable
            and self._search is None
            and (self._next_search is None or now >= self._next_search)
        ):
            self._start_search()
        search = self._search
        # Only while small probes pass, so a lost MTU probe means its size, not the path.
        if search is not None and self._reachable and self._lost == 0 and not self._mtu_in_flight():
            out.append(self._send(now, search.candidate, mtu=True))
        return out

    def on_reply(self, now: float, seq: int, size: int) -> None:
        """An answer came for probe ``seq`` carrying ``size``; unknown or late ones are
        ignored (they were counted lost already)."""
        sent = self._pending.get(seq)
        if sent is None or sent.size != size:
            self._expire(now)
            return
        # This answer is here even if whoever calls us was too slow to see it in time.
        self._expire(now, keep=seq)
        del self._pending[seq]
        self._last_ok = now
        self._lost = 0
        if not sent.mtu:
            self._rtt_ms = max(0.0, (now - sent.sent) * 1000.0)
        self._set_reachable(now, True)
        if sent.mtu and self._search is not None and size == self._search.candidate:
            self._mtu_answer(now, passed=True)

    def on_send_failed(self, now: float, seq: int) -> None:
        """Probe ``seq`` could not leave this host (no route, too big for the interface):
        it is lost now rather than after the timeout."""
        sent = self._pending.pop(seq, None)
        if sent is not None:
            self._lost_one(now, sent)

    def result(self, now: float) -> ProbeResult:
        """What is known about this peer as of ``now``."""
        self._expire(now)
        return ProbeResult(
            reachable=self._reachable,
            last_ok=self._last_ok,
            rtt_ms=self._rtt_ms,
            path_mtu=self._path_mtu,
            lost=self._lost,
            since=self._since,
        )

    # ---------------------------------------------------------------- inside

    def _send(self, now: float, size: int, *, mtu: bool) -> Outgoing:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._pending[self._seq] = _Pending(now, size, mtu)
        payload = encode(REQUEST, self._seq, self.sender_id, now, size)
        # Reachability probes are small; DF on them would only add a way to fail.
        return Outgoing(self.peer_addr, payload, mtu)

    def _mtu_in_flight(self) -> bool:
        return any(p.mtu for p in self._pending.values())

    def _expire(self, now: float, keep: int | None = None) -> None:
        late = [
            seq for seq, p in self._pending.items() if now - p.sent >= self.timeout and seq != keep
        ]
        for seq in late:
            self._lost_one(now, self._pending.pop(seq))

    def _lost_one(self, now: float, sent: _Pending) -> None:
        if sent.mtu:
            search = self._search
            # With small probes failing too, the path lost it, not the size: try it again.
            if search is not None and sent.size == search.candidate and self._lost == 0:
                self._mtu_answer(now, passed=False)
            return
        self._lost += 1
        if self._lost >= LOST_TO_UNREACHABLE:
            self._set_reachable(now, False)

    def _set_reachable(self, now: float, value: bool) -> None:
        if self._reachable == value:
            return
        if value:
            # The path came back (or answered for the first time): measure it again.
            self._search = None
            self._next_search = None
        else:
            self._search = None  # a search over a dead path would only find losses
            self._pending = {s: p for s, p in self._pending.items() if not p.mtu}
        self._reachable = value
        self._since = now

    def _start_search(self) -> None:
        # The full size first: on a healthy path one answer ends the search.
        self._search = _MtuSearch(
            lo=self.min_size, hi=self.max_size + 1, known_lo=False, candidate=self.max_size
        )

    def _mtu_answer(self, now: float, *, passed: bool) -> None:
        search = self._search
        assert search is not None
        size = search.candidate
        if passed:
            search.lo, search.known_lo = size, True
        else:
            search.tries += 1
            if search.tries < MTU_TRIES:
                return  # the same size again at the next due()
            search.hi = size
            if size == search.lo:
                # Even the smallest size we search from is lost while small probes pass.
                search.known_lo = False
                self._finish(now, None)
                return
        search.tries = 0
        if search.known_lo and search.hi - search.lo <= 1:
            self._finish(now, search.lo)
        elif not search.known_lo:
            search.candidate = search.lo  # max failed: is the floor itself good?
        else:
            search.candidate = (search.lo + search.hi) // 2

    def _finish(self, now: float, mtu: int | None) -> None:
        self._path_mtu = mtu
        self._search = None
        self._next_search = now + MTU_RESEARCH_EVERY
