"""The offload pieces of the VXLAN data plane (TSO segmentation, checksum finishing, GRO
coalescing): the Python twins' own rules, and the C code byte for byte against them on
generated TCP/IPv4 frames (payload sizes, MSS, flags, options, seq and IPv4 id near wrap)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.net.vxlan import wire
from meshkit.net.vxlan.plane import load_vxlan_ffi

ffi_mod = load_vxlan_ffi()
needs_c = pytest.mark.skipif(ffi_mod is None, reason="meshkit._vxlan_ffi not built or disabled")

ETH = bytes.fromhex("024dcb007102" "024dcb007101" "0800")
SRC, DST = bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2])


def tcp_frame(payload: bytes, *, seq: int = 1000, ident: int = 7, flags: int = 0x10,
              options: bytes = b"", ports: tuple[int, int] = (40000, 5001),
              ack: int = 555, window: int = 512, eth: bytes = ETH) -> bytes:  # fmt: skip
    """An Ethernet/IPv4/TCP frame with correct checksums."""
    thl = 20 + len(options)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ident & 0xFFFF, 0x4000,
                     64, 6, 0, SRC, DST)  # fmt: skip
    ip = ip[:10] + (~wire.ones_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", *ports, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags,
                      window, 0, 0) + options  # fmt: skip
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, thl + len(payload))
    csum = ~wire.ones_sum(pseudo + tcp + payload) & 0xFFFF
    return eth + ip + tcp[:16] + csum.to_bytes(2, "big") + tcp[18:] + payload


def udp_frame(payload: bytes, *, ident: int = 1, ports: tuple[int, int] = (5353, 53),
              frag: int = 0x4000) -> bytes:  # fmt: skip
    """An Ethernet/IPv4/UDP frame with correct checksums."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), ident & 0xFFFF, frag, 64, 17,
                     0, SRC, DST)  # fmt: skip
    ip = ip[:10] + (~wire.ones_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    udp = struct.pack("!HHHH", *ports, 8 + len(payload), 0)
    pseudo = SRC + DST + struct.pack("!BBH", 0, 17, 8 + len(payload))
    csum = ~wire.ones_sum(pseudo + udp + payload) & 0xFFFF or 0xFFFF
    return ETH + ip + udp[:6] + csum.to_bytes(2, "big") + payload


def tcp_valid(frame: bytes) -> bool:
    ihl = (frame[14] & 15) * 4
    ip, tcp = frame[14 : 14 + ihl], frame[14 + ihl :]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return wire.ones_sum(ip) == 0xFFFF and wire.ones_sum(pseudo + tcp) == 0xFFFF


def c_tso(frame: bytes, mss: int) -> list[bytes] | None:
    assert ffi_mod is not None
    ffi, lib = ffi_mod.ffi, ffi_mod.lib
    cap = len(frame) * 2 + 64 * (len(frame) // max(mss, 1) + 2)
    out = ffi.new("uint8_t[]", cap)
    seg = ffi.new("size_t *")
    n = lib.vx_tso_segment(frame, len(frame), mss, out, cap, seg)
    if n < 0:
        return None
    raw = bytes(ffi.buffer(out, cap))
    size = int(seg[0])
    ihl = (frame[14] & 15) * 4
    hdr = 14 + ihl + (frame[14 + ihl + 12] >> 4) * 4
    total = len(frame) + (n - 1) * hdr  # every segment repeats the headers
    return [raw[k * size : min((k + 1) * size, total)] for k in range(n)]


def c_coalesce(frames: list[bytes]) -> list[tuple[bytes, bytes]]:
    assert ffi_mod is not None
    ffi, lib = ffi_mod.ffi, ffi_mod.lib
    packed = b"".join(frames)
    lens = ffi.new("size_t[]", [len(f) for f in frames] or [0])
    cap = len(packed) + 10 * len(frames) + 16
    out = ffi.new("uint8_t[]", cap)
    out_lens = ffi.new("size_t[]", max(len(frames), 1))
    n = lib.vx_gro_coalesce(packed, lens, len(frames), out, cap, out_lens)
    assert n >= 0
    raw = bytes(ffi.buffer(out, cap))
    items, at = [], 0
    for i in range(n):
        item = raw[at : at + out_lens[i]]
        items.append((item[:10], item[10:]))
        at += out_lens[i]
    return items


def c_finish(frame: bytes, start: int, offset: int) -> bytes | None:
    assert ffi_mod is not None
    ffi = ffi_mod.ffi
    buf = ffi.new("uint8_t[]", frame)
    if ffi_mod.lib.vx_finish_csum(buf, len(frame), start, offset) < 0:
        return None
    return bytes(ffi.buffer(buf, len(frame)))


# ---------------------------------------------------------------------------- strategies

options_st = st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))
near_wrap = st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0xFFFFFFFF - 70000, 0xFFFFFFFF))
flags_st = st.sampled_from([0x10, 0x18, 0x19, 0x11, 0x90, 0x98, 0x50, 0xD9, 0x12, 0x14, 0x30])


@st.composite
def tso_cases(draw: st.DrawFn) -> tuple[bytes, int]:
    payload = draw(st.binary(min_size=0, max_size=9000))
    mss = draw(st.integers(1, 2000) if len(payload) < 600 else st.integers(200, 2000))
    frame = tcp_frame(payload, seq=draw(near_wrap), ident=draw(st.integers(0, 0xFFFF)),
                      flags=draw(flags_st), options=draw(options_st))  # fmt: skip
    return frame, mss


@st.composite
def flows(draw: st.DrawFn) -> list[bytes]:
    """Segments of one or two flows, as a sender's TSO would cut them, then disturbed."""
    mss = draw(st.integers(1, 1460))
    frames: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        payload = draw(st.binary(min_size=1, max_size=min(20 * mss, 30000)))
        super_frame = tcp_frame(payload, seq=draw(near_wrap), flags=draw(flags_st),
                                options=draw(st.sampled_from([b"", bytes(range(12))])),
                                ports=draw(st.sampled_from([(40000, 5001), (40001, 5001)])))
        frames += wire.tso_segment(super_frame, mss)
    if frames and draw(st.booleans()):  # lose, repeat or reorder one
        i = draw(st.integers(0, len(frames) - 1))
        how = draw(st.sampled_from(["drop", "dup", "swap", "pad", "arp", "udp"]))
        if how == "drop":
            del frames[i]
        elif how == "dup":
            frames.insert(i, frames[i])
        elif how == "swap" and i + 1 < len(frames):
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
        elif how == "pad":
            frames[i] += b"\x00" * 4
        elif how == "arp":
            frames.insert(i, ETH[:12] + b"\x08\x06" + bytes(28))
        elif how == "udp":
            frames.insert(i, udp_frame(draw(st.binary(max_size=100))))
    return frames


@st.composite
def udp_flows(draw: st.DrawFn) -> list[bytes]:
    """Datagrams of one or two UDP flows as a sender of fixed-size messages makes them (a
    shorter last one), mixed with the odd TCP segment, one without a checksum or a fragment."""
    size = draw(st.integers(1, 1400))
    frames: list[bytes] = []
    for n in range(draw(st.integers(1, 80))):
        ports = draw(st.sampled_from([(40000, 5201), (40001, 5201)]))
        pay = size if draw(st.integers(0, 9)) else draw(st.integers(1, 1400))
        frames.append(udp_frame(bytes([n & 255]) * pay, ident=n, ports=ports))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(frames) - 1))
        how = draw(st.sampled_from(["nosum", "frag", "tcp", "pad"]))
        f = frames[i]
        if how == "nosum":
            frames[i] = f[:40] + b"\x00\x00" + f[42:]
        elif how == "frag":
            frames[i] = udp_frame(f[42:], frag=0x2000)
        elif how == "tcp":
            frames.insert(i, tcp_frame(b"x" * size))
        else:
            frames[i] = f + bytes(4)
    return frames


# ---------------------------------------------------------------------------- Python rules


def test_tso_segment_rules() -> None:
    payload = bytes(range(256)) * 10  # 2560 bytes
    frame = tcp_frame(payload, seq=0xFFFFFF00, ident=0xFFFF, flags=0x99)  # CWR|ACK|PSH|FIN
    segs = wire.tso_segment(frame, 1000)
    assert [len(s) - 54 for s in segs] == [1000, 1000, 560]
    seqs = [struct.unpack("!I", s[38:42])[0] for s in segs]
    assert seqs == [0xFFFFFF00, (0xFFFFFF00 + 1000) & 0xFFFFFFFF, (0xFFFFFF00 + 2000) & 0xFFFFFFFF]
    assert [struct.unpack("!H", s[18:20])[0] for s in segs] == [0xFFFF, 0, 1]
    assert [s[47] for s in segs] == [0x90, 0x10, 0x19]  # CWR first only, FIN/PSH last only
    assert all(tcp_valid(s) for s in segs)
    assert b"".join(s[54:] for s in segs) == payload
    with pytest.raises(wire.WireError):
        wire.tso_segment(ETH[:12] + b"\x86\xdd" + bytes(60), 100)


def test_coalesce_round_trip() -> None:
    payload = bytes(range(256)) * 20
    segs = wire.tso_segment(tcp_frame(payload, seq=0xFFFFFFF0, flags=0x18), 1448)
    [(hdr, frame)] = wire.coalesce_frames(segs)
    flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", hdr)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (1, 1, 54, 1448, 34, 16)
    assert frame[54:] == payload and frame[47] == 0x18  # the run's last PSH kept
    assert wire.ones_sum(frame[14:34]) == 0xFFFF
    # the checksum field holds the pseudo-header sum: finishing it gives a valid segment
    assert tcp_valid(wire.finish_checksum(frame, start, offset))
    # a lone TCP frame goes as CHECKSUM_PARTIAL: finishing it gives back the frame
    [(hdr, lone)] = wire.coalesce_frames(segs[:1])
    assert hdr == wire.vnet_header(1, 0, 0, 0, 34, 16) and lone != segs[0]
    assert wire.finish_checksum(lone, 34, 16) == segs[0]
    # so does a UDP datagram with a checksum; one without, or ARP, goes as it is, no flags
    udp = udp_frame(b"dns?")
    [(hdr, lone)] = wire.coalesce_frames([udp])
    assert hdr == wire.vnet_header(1, 0, 0, 0, 34, 6)
    assert wire.finish_checksum(lone, 34, 6) == udp
    no_sum = udp[:40] + b"\x00\x00" + udp[42:]
    arp = ETH[:12] + b"\x08\x06" + bytes(28)
    assert wire.coalesce_frames([no_sum, arp]) == [(bytes(10), no_sum), (bytes(10), arp)]
    # a gap in sequence splits runs
    assert len(wire.coalesce_frames([segs[0], segs[2], segs[3]])) == 2


def test_udp_coalesce_round_trip() -> None:
    """Equal-sized datagrams of one flow go as one USO super-frame whose payload is theirs,
    back to back; a shorter one ends the run, another flow or port starts a new one."""
    grams = [udp_frame(bytes([k]) * 64, ident=k, ports=(40000, 5201)) for k in range(5)]
    short = udp_frame(b"end", ident=5, ports=(40000, 5201))
    other = udp_frame(bytes(64), ident=6, ports=(40001, 5201))
    out = wire.coalesce_frames([*grams, short, other])
    assert len(out) == 2
    hdr, frame = out[0]
    flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", hdr)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (1, 5, 42, 64, 34, 6)
    assert frame[42:] == b"".join(g[42:] for g in grams) + b"end"
    assert struct.unpack("!H", frame[16:18])[0] == 20 + 8 + 5 * 64 + 3  # IPv4 total length
    assert struct.unpack("!H", frame[38:40])[0] == 8 + 5 * 64 + 3  # UDP length
    assert wire.ones_sum(frame[14:34]) == 0xFFFF
    finished = wire.finish_checksum(frame, start, offset)
    pseudo = SRC + DST + struct.pack("!BBH", 0, 17, len(frame) - 34)
    assert wire.ones_sum(pseudo + finished[34:]) == 0xFFFF
    assert out[1] == wire.coalesce_frames([other])[0]  # alone: CHECKSUM_PARTIAL, no GSO
    # a datagram larger than the head's, one without a checksum or a fragment: not joined
    for odd in (udp_frame(bytes(65), ports=(40000, 5201)),
                grams[1][:40] + b"\x00\x00" + grams[1][42:],
                udp_frame(bytes(64), ports=(40000, 5201), frag=0x2000)):  # fmt: skip
        assert len(wire.coalesce_frames([grams[0], odd])) == 2


def test_finish_checksum() -> None:
    frame = tcp_frame(b"hello world")
    ihl_end = 34
    pseudo = wire.ones_sum(frame[26:34] + struct.pack("!BBH", 0, 6, len(frame) - ihl_end))
    partial = frame[:50] + pseudo.to_bytes(2, "big") + frame[52:]
    assert wire.finish_checksum(partial, 34, 16) == frame
    with pytest.raises(wire.WireError, match="outside"):
        wire.finish_checksum(frame, 34, len(frame))


# ---------------------------------------------------------------------------- C == Python


@needs_c
@settings(max_examples=300, deadline=None)
@given(tso_cases())
def test_c_tso_matches_python(case: tuple[bytes, int]) -> None:
    frame, mss = case
    py = wire.tso_segment(frame, mss)
    assert c_tso(frame, mss) == py
    assert all(tcp_valid(s) for s in py)


@needs_c
@settings(max_examples=300, deadline=None)
@given(flows())
def test_c_coalesce_matches_python(frames: list[bytes]) -> None:
    assert c_coalesce(frames) == wire.coalesce_frames(frames)


@needs_c
@settings(max_examples=200, deadline=None)
@given(udp_flows())
def test_c_udp_coalesce_matches_python(frames: list[bytes]) -> None:
    assert c_coalesce(frames) == wire.coalesce_frames(frames)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(0, 3100), st.integers(0, 40))
def test_c_finish_checksum_matches_python(frame: bytes, start: int, offset: int) -> None:
    try:
        want: bytes | None = wire.finish_checksum(frame, start, offset)
    except wire.WireError:
        want = None
    assert c_finish(frame, start, offset) == want


@needs_c
def test_c_rejects_non_tcp() -> None:
    assert c_tso(ETH[:12] + b"\x86\xdd" + bytes(60), 100) is None
    assert c_tso(tcp_frame(b"x" * 10), 0) is None
