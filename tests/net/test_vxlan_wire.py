"""The sans-IO VXLAN pieces: Python rules, and the C plane's same rules on generated input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.net.vxlan import wire
from meshkit.net.vxlan.plane import load_vxlan_ffi

ffi_mod = load_vxlan_ffi()
needs_c = pytest.mark.skipif(ffi_mod is None, reason="meshkit._vxlan_ffi not built or disabled")

macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)


def c_check(data: bytes) -> tuple[int, bytes] | str:
    assert ffi_mod is not None
    ffi, lib = ffi_mod.ffi, ffi_mod.lib
    vni = ffi.new("uint32_t *")
    rc = lib.vx_check_datagram(data, len(data), vni)
    if rc >= 0:
        return wire.DROP_REASONS[rc]
    return int(vni[0]), data[8:]


def c_route(frame: bytes, fdb: dict[bytes, bytes], neigh: dict[bytes, bytes]) -> wire.Action:
    assert ffi_mod is not None
    ffi, lib = ffi_mod.ffi, ffi_mod.lib
    packed_fdb = b"".join(m + ip for m, ip in fdb.items())
    packed_neigh = b"".join(ip + m for ip, m in neigh.items())
    peer = ffi.new("uint32_t *")
    out = ffi.new("uint8_t[]", 42)
    drop = ffi.new("int *")
    act = lib.vx_route_frame(frame, len(frame), packed_fdb, len(fdb), packed_neigh, len(neigh),
                             peer, out, drop)  # fmt: skip
    if act == 0:
        return wire.Send(wire.ip_to_text(int(peer[0]).to_bytes(4, "big")))
    if act == 1:
        return wire.ArpReply(bytes(ffi.buffer(out, 42)))
    assert act == 2, act
    return wire.Drop(wire.DROP_REASONS[drop[0]])


def arp_request(dst: bytes, sha: bytes, spa: bytes, tpa: bytes, op: int = 1) -> bytes:
    return (dst + sha + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big")
            + sha + spa + b"\x00" * 6 + tpa)  # fmt: skip


def test_header_layout() -> None:
    assert wire.encode_header(0x123456) == bytes.fromhex("0800000012345600")
    assert wire.check_datagram(wire.encode_header(4096) + b"\xaa" * 14) == (4096, b"\xaa" * 14)


def test_check_datagram_reasons() -> None:
    assert wire.check_datagram(b"\x08" + b"\x00" * 20) == "short"
    assert wire.check_datagram(b"\x00" * 22) == "bad_flags"
    # reserved bits set: ignored on receive (RFC 7348), only the I bit is required
    assert wire.check_datagram(b"\xff" * 8 + b"\x01" * 14) == (0xFFFFFF, b"\x01" * 14)


def test_text_helpers_and_errors() -> None:
    assert wire.mac_to_text(wire.mac_to_bytes("02:4D:c6:12:00:05")) == "02:4d:c6:12:00:05"
    assert wire.ip_to_text(wire.ip_to_bytes("198.18.0.10")) == "198.18.0.10"
    with pytest.raises(wire.WireError, match="invalid MAC address '02:4d'"):
        wire.mac_to_bytes("02:4d")
    with pytest.raises(wire.WireError, match="not hexadecimal"):
        wire.mac_to_bytes("zz:4d:c6:12:00:05")
    with pytest.raises(wire.WireError, match=r"invalid IPv4 address '198\.18\.0\.300'"):
        wire.ip_to_bytes("198.18.0.300")
    with pytest.raises(wire.WireError, match="invalid VNI 16777216"):
        wire.encode_header(1 << 24)


def test_arp_proxy_answers_known_ip_only() -> None:
    sha, spa = bytes.fromhex("024dcb007101"), bytes([203, 0, 113, 1])
    tpa, tmac = bytes([203, 0, 113, 2]), bytes.fromhex("024dcb007102")
    tables = wire.Tables({}, {tpa: tmac})
    req = arp_request(b"\xff" * 6, sha, spa, tpa)
    action = wire.route_frame(req, tables)
    assert isinstance(action, wire.ArpReply)
    reply = action.frame
    assert reply[:6] == sha and reply[6:12] == tmac and reply[12:14] == b"\x08\x06"
    assert reply[20:22] == b"\x00\x02"  # op: reply
    assert reply[22:28] == tmac and reply[28:32] == tpa
    assert reply[32:38] == sha and reply[38:42] == spa
    unknown = arp_request(b"\xff" * 6, sha, spa, bytes([203, 0, 113, 9]))
    assert wire.route_frame(unknown, tables) == wire.Drop("arp_no_neigh")
    announce = arp_request(b"\xff" * 6, sha, tpa, tpa)
    assert wire.route_frame(announce, tables) == wire.Drop("broadcast")


def test_route_unicast_broadcast_unknown() -> None:
    peer_mac = bytes.fromhex("024dcb007102")
    tables = wire.Tables({peer_mac: "198.18.0.11"}, {})
    body = b"\x08\x00" + b"\x45" * 40
    assert wire.route_frame(peer_mac + b"\x02" * 6 + body, tables) == wire.Send("198.18.0.11")
    assert wire.route_frame(b"\x02\x00\x00\x00\x00\x09" + b"\x02" * 6 + body, tables) == \
        wire.Drop("no_fdb")  # fmt: skip
    assert wire.route_frame(b"\x33\x33\x00\x00\x00\x01" + b"\x02" * 6 + body, tables) == \
        wire.Drop("broadcast")  # fmt: skip
    assert wire.route_frame(b"\x02" * 13, tables) == wire.Drop("short")


@needs_c
def test_c_drop_names_match() -> None:
    assert ffi_mod is not None
    lib, ffi = ffi_mod.lib, ffi_mod.ffi
    names = tuple(ffi.string(lib.vx_drop_name(i)).decode() for i in range(lib.VX_DROP_COUNT))
    assert names == wire.DROP_REASONS
    assert lib.vx_drop_name(lib.VX_DROP_COUNT) == ffi.NULL


@needs_c
@given(st.integers(0, wire.MAX_VNI))
def test_c_header_matches(vni: int) -> None:
    assert ffi_mod is not None
    out = ffi_mod.ffi.new("uint8_t[]", 8)
    ffi_mod.lib.vx_encode_header(out, vni)
    assert bytes(ffi_mod.ffi.buffer(out, 8)) == wire.encode_header(vni)


@needs_c
@given(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda h, vni, body: bytes([h]) + b"\x00\x00\x00" + vni.to_bytes(3, "big")
              + b"\x00" + body, st.integers(0, 255), st.integers(0, wire.MAX_VNI),
              st.binary(max_size=60)),
))  # fmt: skip
def test_c_check_datagram_matches(data: bytes) -> None:
    assert c_check(data) == wire.check_datagram(data)


@st.composite
def frames_and_tables(draw: st.DrawFn) -> tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]:
    pool_macs = draw(st.lists(macs, min_size=1, max_size=6))
    pool_ips = draw(st.lists(ips, min_size=1, max_size=6))
    fdb = draw(st.dictionaries(st.sampled_from(pool_macs), ips, max_size=6))
    neigh = draw(st.dictionaries(st.sampled_from(pool_ips), macs, max_size=6))
    dst = draw(st.one_of(st.sampled_from(pool_macs), st.just(b"\xff" * 6), macs))
    kind = draw(st.sampled_from(["arp", "raw", "short"]))
    if kind == "arp":
        frame = arp_request(dst, draw(macs), draw(st.sampled_from(pool_ips) | ips),
                            draw(st.sampled_from(pool_ips) | ips),
                            draw(st.sampled_from([1, 1, 2, 3])))  # fmt: skip
        if draw(st.booleans()):  # corrupt one byte of the ARP header now and then
            i = draw(st.integers(12, 21))
            frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1:]
        frame += draw(st.binary(max_size=20))
    elif kind == "raw":
        frame = dst + draw(st.binary(min_size=8, max_size=80))
    else:
        frame = draw(st.binary(max_size=14))
    return frame, fdb, neigh


@needs_c
@settings(max_examples=400)
@given(frames_and_tables())
def test_c_route_frame_matches(case: tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]) -> None:
    frame, fdb, neigh = case
    tables = wire.Tables({m: wire.ip_to_text(ip) for m, ip in fdb.items()}, neigh)
    assert c_route(frame, fdb, neigh) == wire.route_frame(frame, tables)
