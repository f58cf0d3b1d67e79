"""Sans-IO pieces of the VXLAN data plane (RFC 7348), shared by the pure-Python twin and tests.

What is here: the 8-byte VXLAN header (flags byte 0x08 = I bit, 3 reserved bytes, the 24-bit
VNI in network byte order in bytes 4..6, 1 reserved byte), the check of a received datagram,
the TX decision for a frame read from a TAP (send to a peer / answer an ARP request for a
known neighbour / drop, with the reason), the ARP reply builder, and MAC/IPv4 text <-> bytes
helpers. The C data plane (meshkit/_vxlan.c) implements the same rules; the drop reasons are
listed in the same order as its ``enum vx_drop``.
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


def pack_fdb(fdb: Mapping[str, str]) -> bytes:
    """FDB text mapping (MAC -> peer IPv4) as 10-byte entries: MAC, IPv4 in network order."""
    return b"".join(mac_to_bytes(mac) + ip_to_bytes(ip) for mac, ip in fdb.items())


def pack_neigh(neigh: Mapping[str, str]) -> bytes:
    """Neighbour text mapping (IPv4 -> MAC) as 10-byte entries: IPv4 in network order, MAC."""
    return b"".join(ip_to_bytes(ip) + mac_to_bytes(mac) for ip, mac in neigh.items())


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


def arp_reply_for(request: bytes, neigh: Mapping[bytes, bytes]) -> bytes | None:
    """The ARP proxy: a reply when ``request`` asks for an IPv4 in ``neigh``, else None."""
    target = arp_request_target(request)
    if target is None or target not in neigh:
        return None
    return build_arp_reply(request, neigh[target])


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
