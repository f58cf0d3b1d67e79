"""Sans-IO pieces of the VXLAN data plane (RFC 7348), shared by the pure-Python twin and tests.

What is here: the 8-byte VXLAN header (flags byte 0x08 = I bit, 3 reserved bytes, the 24-bit
VNI in network byte order in bytes 4..6, 1 reserved byte), the check of a received datagram,
the TX decision for a frame read from a TAP (send to a peer / answer an ARP request for a
known neighbour / drop, with the reason), the ARP reply builder, and MAC/IPv4 text <-> bytes
helpers; and the offload twins: finishing a CHECKSUM_PARTIAL checksum, cutting a TCP/IPv4
TSO super-frame into segments, and coalescing received TCP segments into GSO super-frames with
their virtio_net_hdr. The C data plane (meshkit/_vxlan.c) implements the same rules (tests
compare them byte for byte); the drop reasons are listed in the same order as its
``enum vx_drop``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_LEN = 8
ETH_HLEN = 14
ARP_FRAME_LEN = 42
I_FLAG = 0x08
MAX_VNI = (1 << 24) - 1
MAX_UDP_PAYLOAD = 65507  # the most one IPv4 UDP datagram carries

DROP_REASONS: tuple[str, ...] = (
    "short",  # datagram < 8 + 14 bytes, or a TAP frame < 14 bytes
    "bad_flags",  # the I bit is not set
    "unknown_vni",
    "unknown_peer",  # datagram from an address in no FDB
    "no_fdb",  # unicast frame to a MAC not in the FDB
    "broadcast",  # broadcast or multicast frame: never flooded
    "arp_no_neigh",  # broadcast ARP request for an IP not in the neighbour table
    "tap_write_error",
    "tap_read_error",
    "send_error",
    "too_big",
    "recv_error",
    "bad_gso",  # a TAP frame whose virtio header asks for what we cannot do
    # encrypted networks (meshkit.net.vxlan.seal)
    "not_sealed",  # plain datagram on an encrypted network, sealed one on a plain network
    "unknown_key",  # sealed with a key id this node does not hold
    "bad_tag",  # the AEAD tag does not verify: forged or corrupted
    "replay",  # counter already seen inside the replay window
    "too_old",  # counter below the replay window
    "too_new",  # counter far past the receiver's clock
    "no_key",  # TX: an encrypted network holds no key to send with yet
)


class WireError(ValueError):
    """A MAC, IPv4 address or VNI given as input is malformed; the message names it."""


def mac_to_bytes(text: str) -> bytes:
    """``"02:4d:c6:12:00:05"`` -> 6 bytes; WireError naming the text when malformed."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise WireError(f"invalid MAC address {text!r}: want six hex pairs like 02:4d:c6:12:00:05")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise WireError(f"invalid MAC address {text!r}: not hexadecimal") from None


def mac_to_text(raw: bytes) -> str:
    """6 bytes -> lower-case colon text."""
    if len(raw) != 6:
        raise WireError(f"a MAC address has 6 bytes, got {len(raw)}")
    return ":".join(f"{b:02x}" for b in raw)


def ip_to_bytes(text: str) -> bytes:
    """Dotted IPv4 text -> 4 bytes in network order; WireError naming the text when malformed."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise WireError(f"invalid IPv4 address {text!r}") from None


def ip_to_text(raw: bytes) -> str:
    """4 bytes (network order) -> dotted text."""
    return str(ipaddress.IPv4Address(raw))


def check_vni(vni: int) -> int:
    """The VNI itself when it fits 24 bits, else WireError."""
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= MAX_VNI:
        raise WireError(f"invalid VNI {vni!r}: must be an integer 0..{MAX_VNI}")
    return vni


def encode_header(vni: int) -> bytes:
    """The 8-byte VXLAN header for ``vni``."""
    check_vni(vni)
    return bytes((I_FLAG, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\x00"


def check_datagram(data: bytes) -> tuple[int, bytes] | str:
    """``(vni, inner frame)`` for a good datagram, else the drop reason ("short"/"bad_flags").

    Reserved bits and flags other than I are ignored on receive, as RFC 7348 says."""
    if len(data) < HEADER_LEN + ETH_HLEN:
        return "short"
    if not data[0] & I_FLAG:
        return "bad_flags"
    return int.from_bytes(data[4:7], "big"), data[HEADER_LEN:]


@dataclass(frozen=True)
class Tables:
    """One network's tables in wire form: MAC bytes -> peer IPv4 text, IPv4 bytes -> MAC bytes."""

    fdb: Mapping[bytes, str]
    neigh: Mapping[bytes, bytes]

    @classmethod
    def from_text(cls, fdb: Mapping[str, str], neigh: Mapping[str, str]) -> Tables:
        """Checked tables from the text mappings that ``set_peers`` takes."""
        return cls(
            {mac_to_bytes(mac): ip_to_text(ip_to_bytes(ip)) for mac, ip in fdb.items()},
            {ip_to_bytes(ip): mac_to_bytes(mac) for ip, mac in neigh.items()},
        )


@dataclass(frozen=True)
class Send:
    """Encapsulate the frame and send it to ``peer`` (underlay IPv4 text)."""

    peer: str


@dataclass(frozen=True)
class ArpReply:
    """Write ``frame`` (an ARP reply) back into the TAP."""

    frame: bytes


@dataclass(frozen=True)
class Drop:
    """Drop the frame; ``reason`` is one of DROP_REASONS."""

    reason: str


Action = Send | ArpReply | Drop


def arp_request_target(frame: bytes) -> bytes | None:
    """The target IPv4 (4 bytes) of an ARP request for IPv4 over Ethernet, None for anything
    else, including announcements (sender IP == target IP)."""
    if len(frame) < ARP_FRAME_LEN or frame[12:14] != b"\x08\x06":
        return None
    if frame[14:22] != b"\x00\x01\x08\x00\x06\x04\x00\x01":  # Ethernet, IPv4, 6, 4, request
        return None
    if frame[28:32] == frame[38:42]:
        return None
    return frame[38:42]


def build_arp_reply(request: bytes, mac: bytes) -> bytes:
    """The 42-byte reply to ``request`` saying that ``mac`` holds the requested IPv4."""
    sender_mac, sender_ip, target_ip = request[22:28], request[28:32], request[38:42]
    return (
        sender_mac
        + mac
        + b"\x08\x06"
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
        + mac
        + target_ip
        + sender_mac
        + sender_ip
    )


def route_frame(frame: bytes, tables: Tables) -> Action:
    """What the TX path does with a frame read from a TAP."""
    if len(frame) < ETH_HLEN:
        return Drop("short")
    target = arp_request_target(frame)
    group = bool(frame[0] & 1)  # broadcast or multicast destination
    if target is not None:
        mac = tables.neigh.get(target)
        if mac is not None:
            return ArpReply(build_arp_reply(frame, mac))
        if group:
            return Drop("arp_no_neigh")
    if group:
        return Drop("broadcast")
    peer = tables.fdb.get(frame[0:6])
    if peer is None:
        return Drop("no_fdb")
    return Send(peer)


# ---------------------------------------------------------------------------- offloads

VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP_L4 = 5
GRO_MAX_SEGS = 64
# what UserspaceDataplane.stats()["offload"] holds, in the order of vx_plane_offload_stats
OFFLOAD_STATS = (
    "tso_frames",
    "gso_sends",
    "gro_buffers",
    "gro_writes",
    "udp_gso",
    "udp_gro",
    "burst_priority",
    "burst_raises",
    "tap_uso",
)
_FIN, _SYN, _RST, _PSH, _URG, _CWR = 0x01, 0x02, 0x04, 0x08, 0x20, 0x80


def vnet_header(flags: int, gso_type: int, hdr_len: int = 0, gso_size: int = 0,
                csum_start: int = 0, csum_offset: int = 0) -> bytes:  # fmt: skip
    """A struct virtio_net_hdr in the byte order a legacy TAP uses on this (little-endian)
    host."""
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def ones_sum(data: bytes, start: int = 0) -> int:
    """The folded 16-bit ones-complement sum of ``data`` (big-endian words) plus ``start``."""
    if len(data) % 2:
        data += b"\x00"
    total = start + sum(int(w) for w in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def finish_checksum(frame: bytes, start: int, offset: int) -> bytes:
    """``frame`` with its CHECKSUM_PARTIAL checksum finished (the field at start+offset holds
    the pseudo-header sum); 0 is written as 0xffff, as the kernel does. WireError when the
    offsets do not fit the frame."""
    if start >= len(frame) or offset + 2 > len(frame) - start:
        raise WireError(f"checksum at {start}+{offset} outside a {len(frame)}-byte frame")
    value = ~ones_sum(frame[start:]) & 0xFFFF or 0xFFFF
    at = start + offset
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2 :]


@dataclass(frozen=True)
class _Tcp4:
    ihl: int
    thl: int

    @property
    def hdr(self) -> int:
        return ETH_HLEN + self.ihl + self.thl


def _parse_tcp4(frame: bytes) -> _Tcp4 | None:
    if len(frame) < ETH_HLEN + 20 or frame[12:14] != b"\x08\x00":
        return None
    v = frame[ETH_HLEN]
    if v >> 4 != 4 or v & 15 < 5 or frame[ETH_HLEN + 9] != 6:
        return None
    ihl = (v & 15) * 4
    if len(frame) < ETH_HLEN + ihl + 20:
        return None
    thl = (frame[ETH_HLEN + ihl + 12] >> 4) * 4
    if thl < 20 or len(frame) < ETH_HLEN + ihl + thl:
        return None
    return _Tcp4(ihl, thl)


def _pseudo(ip: bytes, tcp_len: int, proto: int = 6) -> int:
    return ones_sum(ip[12:20] + struct.pack("!BBH", 0, proto, tcp_len))


def _lone(frame: bytes) -> tuple[bytes, bytes]:
    """How a frame that coalesces with nothing is written: an unfragmented TCP/IPv4 or
    UDP/IPv4 (with a checksum) datagram as CHECKSUM_PARTIAL (NEEDS_CSUM, its checksum field
    holding the pseudo-header sum: the receiver does not sum it again, and an unfinished one
    from a kernel VXLAN sender passes); anything else as it is, no flags (tun ignores
    DATA_VALID on write, so the kernel checks it)."""
    plain = (vnet_header(0, GSO_NONE), frame)
    if len(frame) < ETH_HLEN + 20 or frame[12:14] != b"\x08\x00":
        return plain
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 15) * 4
    total, frag = struct.unpack("!H2xH", ip[2:8])
    if ip[0] >> 4 != 4 or ihl < 20 or total != len(ip) or frag & 0x3FFF:
        return plain
    l4 = len(ip) - ihl
    if ip[9] == 6 and l4 >= 20 and 20 <= (ip[ihl + 12] >> 4) * 4 <= l4:
        at = 16
    elif (
        ip[9] == 17
        and l4 >= 8
        and struct.unpack("!HH", ip[ihl + 4 : ihl + 8])[0] == l4
        and (ip[ihl + 6 : ihl + 8] != b"\x00\x00")
    ):
        at = 6
    else:
        return plain
    field = ETH_HLEN + ihl + at
    pseudo = _pseudo(ip, l4, ip[9]).to_bytes(2, "big")
    hdr = vnet_header(VNET_F_NEEDS_CSUM, GSO_NONE, 0, 0, ETH_HLEN + ihl, at)
    return hdr, frame[:field] + pseudo + frame[field + 2 :]


def _ip_header(ip: bytes) -> bytes:
    """``ip`` (an IPv4 header) with its checksum recomputed."""
    ip = ip[:10] + b"\x00\x00" + ip[12:]
    return ip[:10] + (~ones_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]


def tso_segment(frame: bytes, mss: int) -> list[bytes]:
    """Cut a TCP/IPv4 TSO frame into frames of at most ``mss`` payload bytes: IPv4 total
    length, id (+1 per segment) and checksum fixed, TCP seq advanced, FIN/PSH only on the
    last, CWR only on the first, full TCP checksum. WireError when it is not TCP/IPv4."""
    t = _parse_tcp4(frame)
    if t is None or mss <= 0 or t.hdr + mss > 65535:
        raise WireError("not a TCP/IPv4 frame over untagged Ethernet, or a bad MSS")
    hdr, payload = frame[: t.hdr], frame[t.hdr :]
    ip0, tcp0 = hdr[ETH_HLEN : ETH_HLEN + t.ihl], hdr[ETH_HLEN + t.ihl :]
    ident, seq = struct.unpack("!H", ip0[4:6])[0], struct.unpack("!I", tcp0[4:8])[0]
    count = max(1, -(-len(payload) // mss))
    out = []
    for k in range(count):
        data = payload[k * mss : (k + 1) * mss]
        ip = ip0[:2] + struct.pack("!HH", t.ihl + t.thl + len(data), (ident + k) & 0xFFFF)
        ip = _ip_header(ip + ip0[6:])
        flags = tcp0[13]
        if k + 1 < count:
            flags &= ~(_FIN | _PSH)
        if k > 0:
            flags &= ~_CWR
        tcp = (tcp0[:4] + struct.pack("!I", (seq + k * mss) & 0xFFFFFFFF) + tcp0[8:13]
               + bytes((flags,)) + tcp0[14:16] + b"\x00\x00" + tcp0[18:])  # fmt: skip
        csum = ~ones_sum(tcp + data, _pseudo(ip, t.thl + len(data))) & 0xFFFF
        tcp = tcp[:16] + csum.to_bytes(2, "big") + tcp[18:]
        out.append(hdr[:ETH_HLEN] + ip + tcp + data)
    return out


def _gro_eligible(frame: bytes) -> _Tcp4 | None:
    t = _parse_tcp4(frame)
    if t is None or len(frame) == t.hdr:
        return None
    ip = frame[ETH_HLEN:]
    total, frag = struct.unpack("!H2xH", ip[2:8])
    if total != len(frame) - ETH_HLEN or frag & 0x3FFF:
        return None
    if ip[t.ihl + 13] & (_SYN | _FIN | _RST | _URG | _CWR):
        return None
    return t


def _udp_eligible(frame: bytes) -> int:
    """The IPv4 header bytes of an unfragmented UDP/IPv4 datagram with a checksum and a
    payload whose lengths cover the frame exactly; 0 when ``frame`` is not one."""
    if len(frame) < ETH_HLEN + 28 or frame[12:14] != b"\x08\x00":
        return 0
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 15) * 4
    total, frag = struct.unpack("!H2xH", ip[2:8])
    if ip[0] >> 4 != 4 or ihl < 20 or ip[9] != 17 or total != len(ip) or frag & 0x3FFF:
        return 0
    if len(ip) < ihl + 9:
        return 0
    udp_len, udp_sum = struct.unpack("!HH", ip[ihl + 4 : ihl + 8])
    return ihl if udp_len == len(ip) - ihl and udp_sum else 0


def _udp_run(frames: list[bytes], i: int, ihl: int) -> int:
    """How many UDP datagrams from ``frames[i]`` coalesce (see coalesce_frames)."""
    head = frames[i]
    hip = head[ETH_HLEN:]
    seg = len(head) - ETH_HLEN - ihl - 8
    total = seg
    k = i + 1
    while k < len(frames) and k - i < GRO_MAX_SEGS:
        f = frames[k]
        if len(f) > len(head) or _udp_eligible(f) != ihl:
            break
        pay = len(f) - ETH_HLEN - ihl - 8
        ip = f[ETH_HLEN:]
        if (ihl + 8 + total + pay > 65535 or f[:ETH_HLEN] != head[:ETH_HLEN]
                or ip[:2] != hip[:2] or ip[6:10] != hip[6:10] or ip[12:ihl] != hip[12:ihl]
                or ip[ihl : ihl + 4] != hip[ihl : ihl + 4]):  # fmt: skip
            break
        total += pay
        k += 1
        if pay < seg:
            break
    return k - i


def _udp_super(frames: list[bytes]) -> tuple[bytes, bytes]:
    """The USO super-frame of a run of UDP datagrams (see coalesce_frames)."""
    head = frames[0]
    ihl = _udp_eligible(head)
    hdr = ETH_HLEN + ihl + 8
    payload = b"".join(f[hdr:] for f in frames)
    ip = bytearray(head[ETH_HLEN : ETH_HLEN + ihl])
    ip[2:4] = (ihl + 8 + len(payload)).to_bytes(2, "big")
    ip_bytes = _ip_header(bytes(ip))
    udp = head[ETH_HLEN + ihl : ETH_HLEN + ihl + 4] + struct.pack("!H", 8 + len(payload))
    udp += _pseudo(ip_bytes, 8 + len(payload), 17).to_bytes(2, "big")
    vh = vnet_header(VNET_F_NEEDS_CSUM, GSO_UDP_L4, hdr, len(head) - hdr, ETH_HLEN + ihl, 6)
    return vh, head[:ETH_HLEN] + ip_bytes + udp + payload


def _gro_run(frames: list[bytes], i: int) -> int:
    """How many frames from ``frames[i]`` coalesce (see coalesce_frames)."""
    head = frames[i]
    ihl = _udp_eligible(head)
    if ihl:
        return _udp_run(frames, i, ihl)
    h = _gro_eligible(head)
    if h is None:
        return 1
    hip = head[ETH_HLEN:]
    htcp = hip[h.ihl :]
    if htcp[13] & _PSH:
        return 1
    mss = len(head) - h.hdr
    total = mss
    next_seq = (struct.unpack("!I", htcp[4:8])[0] + mss) & 0xFFFFFFFF
    k = i + 1
    while k < len(frames) and k - i < GRO_MAX_SEGS:
        f = frames[k]
        t = _gro_eligible(f)
        pay = len(f) - t.hdr if t else 0
        if t is None or t != h or pay > mss or h.ihl + h.thl + total + pay > 65535:
            break
        ip = f[ETH_HLEN:]
        tcp = ip[t.ihl :]
        if (f[:ETH_HLEN] != head[:ETH_HLEN] or ip[:2] != hip[:2] or ip[6:10] != hip[6:10]
                or ip[12 : h.ihl] != hip[12 : h.ihl] or tcp[:4] != htcp[:4]
                or struct.unpack("!I", tcp[4:8])[0] != next_seq or tcp[8:13] != htcp[8:13]
                or tcp[13] & ~_PSH != htcp[13] or tcp[14:16] != htcp[14:16]
                or tcp[18 : h.thl] != htcp[18 : h.thl]):  # fmt: skip
            break
        total += pay
        next_seq = (next_seq + pay) & 0xFFFFFFFF
        k += 1
        if pay < mss or tcp[13] & _PSH:
            break
    return k - i


def coalesce_frames(frames: list[bytes]) -> list[tuple[bytes, bytes]]:
    """What the RX path writes to a vnet TAP for these received frames, as (virtio header,
    frame) pairs. Consecutive TCP/IPv4 data segments of one flow (same Ethernet header, IPv4
    header but total length/id/checksum, ports, ACK, next sequence number, TCP header from
    byte 12 on but PSH; no SYN/FIN/RST/URG/CWR; all payloads as large as the first but the
    last, a PSH ending the run; at most GRO_MAX_SEGS frames and 64 KB of IPv4) become one
    super-frame: the first frame's headers with the total length, IPv4 checksum and PSH of
    the run, the TCP checksum field holding the pseudo-header sum, NEEDS_CSUM and GSO_TCPV4
    with gso_size = the first payload. Consecutive UDP/IPv4 datagrams of one flow (same
    Ethernet header, IPv4 header but total length/id/checksum, ports; a checksum; every
    payload as large as the first but the last, which may be shorter and ends the run; at
    most GRO_MAX_SEGS and 64 KB of IPv4) become one USO super-frame: the first datagram's
    headers with the run's IPv4 total length and checksum, UDP length and pseudo-header sum,
    NEEDS_CSUM and GSO_UDP_L4 with gso_size = the first payload (the stack cuts it back into
    the same datagrams). A frame alone goes as ``_lone`` says."""
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(frames):
        run = _gro_run(frames, i)
        head = frames[i]
        if run == 1:
            out.append(_lone(head))
            i += 1
            continue
        if _udp_eligible(head):
            out.append(_udp_super(frames[i : i + run]))
            i += run
            continue
        t = _parse_tcp4(head)
        assert t is not None
        payload = b"".join(f[t.hdr :] for f in frames[i : i + run])
        ip = bytearray(head[ETH_HLEN : ETH_HLEN + t.ihl])
        ip[2:4] = (t.ihl + t.thl + len(payload)).to_bytes(2, "big")
        ip_bytes = _ip_header(bytes(ip))
        tcp = bytearray(head[ETH_HLEN + t.ihl : t.hdr])
        tcp[13] |= frames[i + run - 1][ETH_HLEN + t.ihl + 13] & _PSH
        tcp[16:18] = _pseudo(ip_bytes, t.thl + len(payload)).to_bytes(2, "big")
        hdr = vnet_header(VNET_F_NEEDS_CSUM, GSO_TCPV4, t.hdr, len(head) - t.hdr,
                          ETH_HLEN + t.ihl, 16)  # fmt: skip
        out.append((hdr, head[:ETH_HLEN] + ip_bytes + bytes(tcp) + payload))
        i += run
    return out
