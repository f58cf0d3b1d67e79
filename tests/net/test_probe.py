"""The probe datagram and the per-peer probing state machine, on a simulated path and clock."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.net.probe import (
    HEADER_BYTES,
    IP_UDP_OVERHEAD,
    LOST_TO_UNREACHABLE,
    MAX_SENDER_BYTES,
    MTU_RESEARCH_EVERY,
    REPLY,
    REQUEST,
    PeerProbe,
    Probe,
    decode,
    encode,
    reply_to,
    smallest_size,
)

senders = st.text(max_size=MAX_SENDER_BYTES).filter(lambda s: len(s.encode()) <= 64)
finite = st.floats(allow_nan=False, allow_infinity=False)


# ------------------------------------------------------------------ the datagram


@given(
    kind=st.sampled_from([REQUEST, REPLY]),
    seq=st.integers(0, 0xFFFFFFFF),
    sender=senders,
    sent=finite,
    size=st.integers(0, 9000),
)
def test_encode_decode_round_trip(kind: int, seq: int, sender: str, sent: float, size: int) -> None:
    data = encode(kind, seq, sender, sent, size)
    want = max(size, smallest_size(sender))
    assert len(data) + IP_UDP_OVERHEAD == want
    assert decode(data) == Probe(kind, seq, sender, sent, want)


@given(st.binary(max_size=300))
def test_decode_of_random_bytes_never_raises(data: bytes) -> None:
    probe = decode(data)
    assert probe is None or probe.size == len(data) + IP_UDP_OVERHEAD


@settings(max_examples=200)
@given(sender=senders, size=st.integers(0, 1600), data=st.data())
def test_decode_of_a_mangled_probe_never_raises(
    sender: str, size: int, data: st.DataObject
) -> None:
    raw = bytearray(encode(REQUEST, 7, sender, 1.5, size))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    decode(bytes(raw[:cut]))  # must not raise, whatever it returns


def test_decode_refuses_what_is_not_a_whole_probe() -> None:
    good = encode(REQUEST, 1, "node-a", 2.0, 600)
    assert decode(good) is not None
    assert decode(b"") is None
    assert decode(good[:-1]) is None  # shorter than its size field says
    assert decode(good + b"\0") is None  # longer
    assert decode(b"XKPR" + good[4:]) is None  # wrong magic
    assert decode(good[:4] + b"\x02" + good[5:]) is None  # unknown version
    assert decode(good[:5] + b"\x03" + good[6:]) is None  # unknown kind
    bad_id = bytearray(encode(REQUEST, 1, "ab", 2.0, 600))
    bad_id[HEADER_BYTES] = 0xFF  # not UTF-8
    assert decode(bytes(bad_id)) is None
    nan = bytearray(good)
    nan[12:20] = b"\x7f\xf8" + bytes(6)  # the send time as NaN
    assert decode(bytes(nan)) is None


def test_encode_refuses_what_cannot_go_on_the_wire() -> None:
    with pytest.raises(ValueError, match="kind"):
        encode(9, 1, "a", 0.0)
    with pytest.raises(ValueError, match="32 bits"):
        encode(REQUEST, 1 << 32, "a", 0.0)
    with pytest.raises(ValueError, match="sender id"):
        encode(REQUEST, 1, "x" * 65, 0.0)
    with pytest.raises(ValueError, match="65535"):
        encode(REQUEST, 1, "a", 0.0, 70000)
    with pytest.raises(ValueError, match="finite"):
        encode(REQUEST, 1, "a", float("inf"))


def test_a_reply_echoes_seq_size_and_send_time() -> None:
    request = decode(encode(REQUEST, 42, "node-a", 12.25, 1400))
    assert request is not None
    reply = decode(reply_to(request, "node-b"))
    assert reply == Probe(REPLY, 42, "node-b", 12.25, 1400)


# ------------------------------------------------------------------ the state machine


@dataclass
class Path:
    """A simulated path: answers probes up to ``mtu`` bytes while up, after ``rtt``."""

    mtu: int = 1450
    up: bool = True
    rtt: float = 0.004
    drop_once: set[int] = field(default_factory=set)  # sizes lost the first time only
    sent: list[tuple[int, bool]] = field(default_factory=list)  # (size, df) of every probe


@dataclass
class Sim:
    """Drives a PeerProbe like the I/O shell does: a tick every 0.5 s, answers as they
    come, and what is due sent right after each answer."""

    peer: PeerProbe
    path: Path
    now: float = 100.0
    tick: float = 0.5
    _next_tick: float = 100.0
    _answers: list[tuple[float, int, int]] = field(default_factory=list)

    def _send(self, at: float) -> None:
        for out in self.peer.due(at):
            assert out.addr == self.peer.peer_addr
            probe = decode(out.payload)
            assert probe is not None and probe.kind == REQUEST
            self.path.sent.append((probe.size, out.df))
            if probe.size in self.path.drop_once:
                self.path.drop_once.discard(probe.size)
                continue
            if self.path.up and probe.size <= self.path.mtu:
                heapq.heappush(self._answers, (at + self.path.rtt, probe.seq, probe.size))

    def run_until(self, end: float) -> None:
        while True:
            answer_at = self._answers[0][0] if self._answers else float("inf")
            at = min(self._next_tick, answer_at)
            if at > end:
                self.now = end
                return
            self.now = at
            if answer_at <= self._next_tick:
                _, seq, size = heapq.heappop(self._answers)
                self.peer.on_reply(at, seq, size)
            else:
                self._next_tick += self.tick
            self._send(at)

    def run_while(self, cond: object, limit: float = 600.0) -> None:
        """Step a tick at a time while ``cond()`` holds, at most ``limit`` simulated seconds."""
        assert callable(cond)
        stop = self.now + limit
        while cond():
            assert self.now < stop, "the probe state never changed"
            self.run_until(self.now + self.tick)


def make(mtu: int = 1450) -> Sim:
    peer = PeerProbe("node-b", "198.19.0.3", max_size=1450, sender_id="node-a")
    return Sim(peer, Path(mtu=mtu))


def test_nothing_known_before_the_first_probe() -> None:
    sim = make()
    res = sim.peer.result(sim.now)
    assert (res.reachable, res.last_ok, res.rtt_ms, res.path_mtu, res.lost, res.since) == (
        None,
        None,
        None,
        None,
        0,
        None,
    )


def test_first_answer_makes_the_peer_reachable_and_gives_the_rtt() -> None:
    sim = make()
    sim.run_until(100.5)
    res = sim.peer.result(sim.now)
    assert res.reachable is True
    assert res.since == pytest.approx(100.004)
    assert res.last_ok is not None
    assert res.rtt_ms == pytest.approx(4.0)
    assert sim.path.sent[0] == (smallest_size("node-a"), False)  # small, no DF


def test_reachability_probes_go_every_interval() -> None:
    sim = make(mtu=1450)
    sim.run_until(159.9)
    small = [s for s in sim.path.sent if not s[1]]
    assert len(small) == 30  # one per 2 s over 60 s


def test_flips_to_unreachable_after_three_losses_and_back_on_the_first_answer() -> None:
    sim = make()
    sim.run_until(110.0)
    assert sim.peer.result(sim.now).reachable is True
    sim.path.up = False
    seen: list[tuple[bool | None, int]] = []
    while sim.peer.result(sim.now).reachable:
        sim.run_until(sim.now + 0.5)
        res = sim.peer.result(sim.now)
        seen.append((res.reachable, res.lost))
    assert (True, LOST_TO_UNREACHABLE - 1) in seen
    assert seen[-1] == (False, LOST_TO_UNREACHABLE)
    down = sim.peer.result(sim.now)
    # With the defaults (2 s apart, 1 s timeout) the flip comes 5-7 s after the cut.
    assert 110.0 + 4.0 <= down.since <= 110.0 + 7.5  # type: ignore[operator]
    sim.run_until(sim.now + 10.0)
    assert sim.peer.result(sim.now).lost > LOST_TO_UNREACHABLE
    sim.path.up = True
    sim.run_while(lambda: not sim.peer.result(sim.now).reachable, limit=3.0)
    up = sim.peer.result(sim.now)
    assert up.reachable is True and up.lost == 0
    assert up.since is not None and up.since > down.since  # type: ignore[operator]


def test_a_peer_never_answering_becomes_unreachable_from_unknown() -> None:
    sim = make()
    sim.path.up = False
    sim.run_until(104.0)
    assert sim.peer.result(sim.now).reachable is None  # two losses: no verdict yet
    sim.run_until(106.0)
    res = sim.peer.result(sim.now)
    assert res.reachable is False and res.since is not None and res.last_ok is None


@settings(max_examples=60, deadline=None)
@given(st.integers(576, 1450))
def test_the_mtu_search_finds_the_largest_size_that_passes(mtu: int) -> None:
    sim = make(mtu=mtu)
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu is None)
    assert sim.peer.result(sim.now).path_mtu == mtu
    big = [size for size, df in sim.path.sent if df]
    assert max(big) == 1450 and min(big) >= 576  # DF probes stay inside [min, max]


def test_mtu_probes_carry_df_and_one_is_in_flight_at_a_time() -> None:
    sim = make(mtu=1000)
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu is None)
    df_sizes = [size for size, df in sim.path.sent if df]
    assert df_sizes[0] == 1450  # the full size first
    assert len(df_sizes) <= 2 * 12  # a binary search, each failing size tried twice at most
    assert sim.peer.result(sim.now).path_mtu == 1000


def test_a_path_below_the_minimum_gives_no_mtu() -> None:
    sim = make(mtu=500)
    sim.run_until(200.0)
    res = sim.peer.result(sim.now)
    assert res.reachable is True and res.path_mtu is None
    tried = [size for size, df in sim.path.sent if df]
    assert tried[:4] == [1450, 1450, 576, 576]
    assert len(tried) == 4  # and no new search until the periodic one


def test_one_random_loss_does_not_shrink_the_mtu() -> None:
    sim = make(mtu=1450)
    sim.path.drop_once = {1450}
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu is None)
    assert sim.peer.result(sim.now).path_mtu == 1450


def test_the_mtu_is_searched_again_after_the_path_recovers() -> None:
    sim = make(mtu=1450)
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu is None)
    assert sim.peer.result(sim.now).path_mtu == 1450
    sim.path.up = False
    sim.run_while(lambda: sim.peer.result(sim.now).reachable)
    sim.path.mtu = 1300
    sim.path.up = True
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu != 1300, limit=60.0)
    assert sim.peer.result(sim.now).reachable is True


def test_the_mtu_is_searched_again_every_few_minutes() -> None:
    sim = make(mtu=1450)
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu is None)
    found_at = sim.now
    sim.path.mtu = 1200
    sim.run_until(found_at + MTU_RESEARCH_EVERY - 1.0)
    assert sim.peer.result(sim.now).path_mtu == 1450  # not yet
    sim.run_while(lambda: sim.peer.result(sim.now).path_mtu != 1200, limit=60.0)


def test_a_failed_send_is_a_loss_at_once() -> None:
    peer = PeerProbe("b", "198.19.0.3", max_size=1450)
    seqs = []
    for i in range(LOST_TO_UNREACHABLE):
        (out,) = peer.due(10.0 + 2.0 * i)
        probe = decode(out.payload)
        assert probe is not None
        seqs.append(probe.seq)
        peer.on_send_failed(10.0 + 2.0 * i, probe.seq)
    res = peer.result(10.0 + 2.0 * (LOST_TO_UNREACHABLE - 1))
    assert res.reachable is False and res.lost == LOST_TO_UNREACHABLE


def test_late_unknown_or_resized_answers_are_ignored() -> None:
    peer = PeerProbe("b", "198.19.0.3", max_size=1450)
    (out,) = peer.due(10.0)
    probe = decode(out.payload)
    assert probe is not None
    peer.on_reply(10.1, probe.seq + 99, probe.size)  # unknown seq
    peer.on_reply(10.1, probe.seq, probe.size + 1)  # not the size sent
    assert peer.result(10.1).reachable is None
    assert peer.result(11.1).lost == 1  # the timeout passed and was seen
    peer.on_reply(11.5, probe.seq, probe.size)  # so this answer is too late
    res = peer.result(11.5)
    assert res.reachable is None and res.lost == 1 and res.last_ok is None


def test_an_answer_waiting_while_the_caller_was_slow_still_counts() -> None:
    peer = PeerProbe("b", "198.19.0.3", max_size=1450)
    (out,) = peer.due(10.0)
    probe = decode(out.payload)
    assert probe is not None
    # The loop only got to the answer 1.2 s later, with no result() or due() in between.
    peer.on_reply(11.2, probe.seq, probe.size)
    res = peer.result(11.2)
    assert res.reachable is True and res.lost == 0


def test_bad_settings_are_refused_with_the_peer_named() -> None:
    with pytest.raises(ValueError, match=r"node-x.*min_size"):
        PeerProbe("node-x", "198.19.0.3", max_size=500)
    with pytest.raises(ValueError, match=r"node-x.*min_size"):
        PeerProbe("node-x", "198.19.0.3", max_size=1450, min_size=20)
    with pytest.raises(ValueError, match=r"node-x.*positive"):
        PeerProbe("node-x", "198.19.0.3", max_size=1450, interval=0)
    with pytest.raises(ValueError, match="sender id"):
        PeerProbe("node-x", "198.19.0.3", max_size=1450, sender_id="n" * 65)
