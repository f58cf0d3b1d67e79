"""PROXY protocol v1 (text) and v2 (binary) headers, per HAProxy's proxy-protocol.txt (sans-IO).

The ingress prepends a header so a backend learns the real client address; test backends and
the web server parse it. Addresses are (ip_text, port) tuples with canonical IP text.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["V1_MAX", "V2_SIGNATURE", "ProxyHeader", "encode_v1", "encode_v2", "parse"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# The spec bounds a v1 line at 107 bytes including CRLF; longer means it is not a v1 header.
V1_MAX = 107

_V2_PROXY = 0x21  # version 2, command PROXY
_FAM_INET, _FAM_INET6 = 0x10, 0x20
_TRANSPORT = {"tcp": 0x1, "udp": 0x2}
_ADDR_LEN = {0x1: 12, 0x2: 36, 0x3: 216}  # by address family nibble: INET, INET6, UNIX

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. src/dst are None when the sender did not convey addresses (LOCAL,
    UNKNOWN, AF_UNSPEC or AF_UNIX): the receiver then uses the connection's own addresses."""

    version: int
    command: str  # "PROXY" or "LOCAL"
    proto: str  # "tcp", "udp" or "unknown"
    src: Address | None
    dst: Address | None


def _ip(text: str) -> _IP:
    """Parse an address read from a header; zone ids ("fe80::1%eth0") are not valid there."""
    if "%" in text:
        raise ValueError(f"IPv6 zone ids cannot appear in a PROXY header: {text!r}")
    return ipaddress.ip_address(text)


def _sock_ip(text: str) -> _IP:
    """Parse an address from a socket. Link-local peers come with a zone id that no header can
    carry; it is dropped rather than refusing the client."""
    return ipaddress.ip_address(text.partition("%")[0])


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is out of range 0-65535")
    return port


def _unmapped(ip: _IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address `ip` is (itself, or the a.b.c.d of ::ffff:a.b.c.d), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ip.ipv4_mapped


def _pair(src: Address, dst: Address) -> tuple[_IP, _IP]:
    """Both addresses in one family. When both are IPv4 (an IPv4 client of a dual-stack
    `[::]` listener shows as ::ffff:a.b.c.d on both sides) they go as AF_INET/TCP4: a
    backend (an allow list, a log, X-Forwarded-For) must see the client as the IPv4
    address it is, as HAProxy and nginx send it. A real v4/v6 mix maps the v4 side to
    ::ffff:a.b.c.d rather than sending UNKNOWN, so the backend still learns the client."""
    s, d = _sock_ip(src[0]), _sock_ip(dst[0])
    _check_port(src[1])
    _check_port(dst[1])
    s4, d4 = _unmapped(s), _unmapped(d)
    if s4 is not None and d4 is not None:
        return s4, d4
    if s.version != d.version:
        if s.version == 4:
            s = ipaddress.IPv6Address(f"::ffff:{s}")
        else:
            d = ipaddress.IPv6Address(f"::ffff:{d}")
    return s, d


def encode_v1(proto: str, src: Address, dst: Address) -> bytes:
    """`PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`. v1 can only describe TCP."""
    if proto.lower() != "tcp":
        raise ValueError(f"PROXY protocol v1 can only carry tcp, not {proto!r}; use v2")
    s, d = _pair(src, dst)
    family = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {family} {s} {d} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v2(proto: str, src: Address, dst: Address) -> bytes:
    """Binary header, command PROXY, STREAM (tcp) or DGRAM (udp), network byte order."""
    transport = _TRANSPORT.get(proto.lower())
    if transport is None:
        raise ValueError(f"PROXY protocol v2 proto must be tcp or udp, not {proto!r}")
    s, d = _pair(src, dst)
    family = _FAM_INET if s.version == 4 else _FAM_INET6
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family | transport, len(body)) + body


def parse(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse a v1 or v2 header at the start of data.

    Returns (header, bytes consumed), or None when data is a valid-so-far prefix and more bytes
    are needed. Raises ValueError (and only ValueError) when data cannot start a header.
    """
    data = bytes(data)
    if not data:
        return None
    if data[:12] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    if data[:6] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ValueError("not a PROXY protocol header (no v1 or v2 signature)")


# --- v1 ----------------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    line = data[: end if end >= 0 else min(len(data), V1_MAX)]
    # Reject garbage as soon as it is seen instead of waiting for a CRLF that may never come.
    if any(not 0x20 <= b < 0x7F for b in line.rstrip(b"\r")):
        raise ValueError("PROXY v1 header contains non-printable bytes")
    fields = line.decode("ascii").split(" ")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ValueError(f"PROXY v1 header has no CRLF within {V1_MAX} bytes")
        if len(fields) > 2 and fields[1] not in ("TCP4", "TCP6", "UNKNOWN"):
            raise ValueError(f"PROXY v1 protocol {fields[1]!r} is not TCP4, TCP6 or UNKNOWN")
        return None
    consumed = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # The spec says the rest of an UNKNOWN line is to be ignored.
        return ProxyHeader(1, "PROXY", "unknown", None, None), consumed
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ValueError(
            "PROXY v1 header must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' or 'PROXY UNKNOWN'"
        )
    version = 4 if fields[1] == "TCP4" else 6
    src = (_v1_ip(fields[2], version), _v1_port(fields[4]))
    dst = (_v1_ip(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, "PROXY", "tcp", src, dst), consumed


def _v1_ip(text: str, version: int) -> str:
    try:
        ip = _ip(text)
    except ValueError:
        raise ValueError(f"PROXY v1 address {text!r} is not an IP address") from None
    if ip.version != version:
        raise ValueError(f"PROXY v1 address {text!r} is not IPv{version}")
    return str(ip)


def _v1_port(text: str) -> int:
    # Plain ASCII digits without leading zeros, as the spec demands; int() is more lenient.
    if not text.isascii() or not text.isdigit() or text != str(int(text)):
        raise ValueError(f"PROXY v1 port {text!r} is not a number without leading zeros")
    if len(text) > 5 or int(text) > 65535:
        raise ValueError(f"PROXY v1 port {text!r} is out of range 0-65535")
    return int(text)


# --- v2 ----------------------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ValueError(f"PROXY v2 header has version {data[12] >> 4}, expected 2")
        return None
    ver_cmd, fam_proto, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ValueError(f"PROXY v2 header has version {ver_cmd >> 4}, expected 2")
    command = {0x0: "LOCAL", 0x1: "PROXY"}.get(ver_cmd & 0xF)
    if command is None:
        raise ValueError(f"PROXY v2 command 0x{ver_cmd & 0xF:x} is not LOCAL or PROXY")
    family, transport = fam_proto >> 4, fam_proto & 0xF
    if family > 0x3 or transport > 0x2:
        raise ValueError(f"PROXY v2 address family/protocol byte 0x{fam_proto:02x} is invalid")
    if command == "PROXY" and length < _ADDR_LEN.get(family, 0):
        raise ValueError(f"PROXY v2 address block of {length} bytes is too short")
    consumed = 16 + length
    if len(data) < consumed:
        return None
    # TLVs after the address block are skipped: nothing here needs them.
    if command == "LOCAL" or family not in (0x1, 0x2) or transport == 0:
        return ProxyHeader(2, command, "unknown", None, None), consumed
    proto = "tcp" if transport == 0x1 else "udp"
    s_ip: _IP
    d_ip: _IP
    if family == 0x1:
        s_ip, d_ip = ipaddress.IPv4Address(data[16:20]), ipaddress.IPv4Address(data[20:24])
        ports = data[24:28]
    else:
        s_ip, d_ip = ipaddress.IPv6Address(data[16:32]), ipaddress.IPv6Address(data[32:48])
        ports = data[48:52]
    sport, dport = struct.unpack("!HH", ports)
    return ProxyHeader(2, "PROXY", proto, (str(s_ip), sport), (str(d_ip), dport)), consumed
