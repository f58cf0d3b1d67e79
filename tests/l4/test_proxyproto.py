"""Tests for meshkit.l4.proxyproto: PROXY protocol v1/v2 encoding and parsing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.l4.proxyproto import V1_MAX, V2_SIGNATURE, ProxyHeader, encode_v1, encode_v2, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


def test_signature_constant() -> None:
    assert V2_SIGNATURE == SIG
    assert len(SIG) == 12


# --- v1 --------------------------------------------------------------------------------


def test_v1_known_tcp4() -> None:
    # The example from HAProxy's proxy-protocol.txt.
    line = b"PROXY TCP4 203.0.113.1 203.0.113.11 56324 443\r\n"
    assert encode_v1("tcp", ("203.0.113.1", 56324), ("203.0.113.11", 443)) == line
    assert parse(line + b"GET / HTTP/1.1\r\n") == (
        ProxyHeader(1, "PROXY", "tcp", ("203.0.113.1", 56324), ("203.0.113.11", 443)),
        len(line),
    )


def test_v1_known_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n"
    assert encode_v1("TCP", ("2001:DB8:0::1", 65535), ("::1", 0)) == line
    header, used = parse(line) or pytest.fail("incomplete")
    assert header == ProxyHeader(1, "PROXY", "tcp", ("2001:db8::1", 65535), ("::1", 0))
    assert used == len(line)


def test_v1_longest_line_fits() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104 <= V1_MAX
    header, used = parse(line) or pytest.fail("incomplete")
    assert header.src == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    assert used == 104


def test_v1_mixed_families_map_v4_into_v6() -> None:
    assert encode_v1("tcp", ("198.51.100.1", 5000), ("::1", 80)) == (
        b"PROXY TCP6 ::ffff:c633:6401 ::1 5000 80\r\n"
    )
    assert encode_v1("tcp", ("::1", 5000), ("198.51.100.1", 80)) == (
        b"PROXY TCP6 ::1 ::ffff:c633:6401 5000 80\r\n"
    )


@pytest.mark.parametrize(
    "line",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", b"PROXY UNKNOWN whatever\r\n"],
)
def test_v1_unknown(line: bytes) -> None:
    assert parse(line + b"rest") == (ProxyHeader(1, "PROXY", "unknown", None, None), len(line))


def test_encode_drops_zone_ids() -> None:
    # Sockets report link-local peers as "fe80::1%eth0"; the header has no room for the zone.
    src, dst = ("fe80::1%eth0", 1), ("fe80::2%2", 2)
    assert encode_v1("tcp", src, dst) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    header, _ = parse(encode_v2("tcp", src, dst)) or pytest.fail("incomplete")
    assert (header.src, header.dst) == (("fe80::1", 1), ("fe80::2", 2))


def test_v1_udp_refused() -> None:
    with pytest.raises(ValueError, match="v1 can only carry tcp"):
        encode_v1("udp", ("1.2.3.4", 1), ("1.2.3.4", 2))


@pytest.mark.parametrize(
    ("src", "dst", "match"),
    [
        (("example.com", 1), ("1.2.3.4", 2), "does not appear to be an IPv4 or IPv6"),
        (("1.2.3.4", -1), ("1.2.3.4", 2), "port -1 is out of range"),
        (("1.2.3.4", 1), ("1.2.3.4", 65536), "port 65536 is out of range"),
    ],
)
def test_encode_rejects_bad_addresses(
    src: tuple[str, int], dst: tuple[str, int], match: str
) -> None:
    for encode in (encode_v1, encode_v2):
        with pytest.raises(ValueError, match=match):
            encode("tcp", src, dst)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP5 1.2", "protocol 'TCP5' is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "'::1' is not IPv4"),
        (b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", "'1.2.3.4' is not IPv6"),
        (b"PROXY TCP4 1.2.3.04 1.2.3.4 1 2\r\n", "is not an IP address"),
        (b"PROXY TCP4 host 1.2.3.4 1 2\r\n", "is not an IP address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "is not an IP address"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "port '65536'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", "port '080'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 +8 2\r\n", r"port '\+8'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 -2\r\n", "port '-2'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "non-printable"),
        (b"PROXY TCP4 1.2.3.4\x00", "non-printable"),
        (b"PROXY \xff", "non-printable"),
        (b"PROXY " + b"x" * 200, f"no CRLF within {V1_MAX} bytes"),
        (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", f"no CRLF within {V1_MAX} bytes"),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY protocol header"),
    ],
)
def test_v1_invalid(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(data)


# --- v2 --------------------------------------------------------------------------------


def test_v2_known_tcp4() -> None:
    data = encode_v2("tcp", ("1.2.3.4", 1234), ("5.6.7.8", 80))
    assert data == (
        SIG + b"\x21\x11\x00\x0c" + b"\x01\x02\x03\x04" + b"\x05\x06\x07\x08" + b"\x04\xd2\x00\x50"
    )
    assert parse(data) == (
        ProxyHeader(2, "PROXY", "tcp", ("1.2.3.4", 1234), ("5.6.7.8", 80)),
        28,
    )


def test_v2_known_udp4() -> None:
    data = encode_v2("udp", ("198.51.100.1", 53), ("198.51.100.2", 5353))
    assert data[12:16] == b"\x21\x12\x00\x0c"
    assert data[16:] == bytes([198, 51, 100, 1, 198, 51, 100, 2]) + struct.pack("!HH", 53, 5353)


def test_v2_known_tcp6_and_udp6() -> None:
    data = encode_v2("tcp", ("::1", 443), ("2001:db8::2", 8443))
    assert data[:16] == SIG + b"\x21\x21\x00\x24"
    assert data[16:32] == b"\x00" * 15 + b"\x01"
    assert data[32:48] == ipaddress.IPv6Address("2001:db8::2").packed
    assert data[48:] == b"\x01\xbb\x20\xfb"
    assert len(data) == 52
    assert encode_v2("UDP", ("::1", 1), ("::2", 2))[12:16] == b"\x21\x22\x00\x24"


def test_v2_mixed_families_map_v4_into_v6() -> None:
    data = encode_v2("tcp", ("192.0.2.1", 1), ("::1", 2))
    header, _ = parse(data) or pytest.fail("incomplete")
    assert header.src == ("::ffff:c000:201", 1)
    assert ipaddress.IPv6Address(header.src[0]).ipv4_mapped == ipaddress.IPv4Address("192.0.2.1")


def test_v2_bad_proto() -> None:
    with pytest.raises(ValueError, match="must be tcp or udp"):
        encode_v2("sctp", ("1.2.3.4", 1), ("1.2.3.4", 2))


def test_v2_local_command() -> None:
    # A LOCAL header (health checks from the proxy itself) carries no usable addresses.
    data = SIG + b"\x20\x00\x00\x00"
    assert parse(data + b"payload") == (ProxyHeader(2, "LOCAL", "unknown", None, None), 16)
    # Even with an address block, LOCAL means the addresses are to be ignored.
    data = SIG + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse(data) == (ProxyHeader(2, "LOCAL", "unknown", None, None), 28)


def test_v2_unspec_and_unix() -> None:
    assert parse(SIG + b"\x21\x00\x00\x00") == (
        ProxyHeader(2, "PROXY", "unknown", None, None),
        16,
    )
    unix = SIG + b"\x21\x31" + struct.pack("!H", 216) + bytes(216)
    assert parse(unix) == (ProxyHeader(2, "PROXY", "unknown", None, None), 232)


def test_v2_tlvs_are_skipped() -> None:
    base = encode_v2("tcp", ("1.2.3.4", 1), ("5.6.7.8", 2))
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP with 3 bytes
    data = base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv
    header, used = parse(data + b"rest") or pytest.fail("incomplete")
    assert header.src == ("1.2.3.4", 1)
    assert used == len(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (SIG + b"\x11\x11\x00\x0c", "version 1, expected 2"),
        (SIG + b"\x31", "version 3, expected 2"),
        (SIG + b"\x22\x11\x00\x0c", "command 0x2"),
        (SIG + b"\x21\x41\x00\x0c", "0x41 is invalid"),
        (SIG + b"\x21\x13\x00\x0c", "0x13 is invalid"),
        (SIG + b"\x21\x11\x00\x0b", "11 bytes is too short"),
        (SIG + b"\x21\x21\x00\x0c", "12 bytes is too short"),
        (SIG + b"\x21\x31\x00\x24", "36 bytes is too short"),
        (SIG[:11] + b"X", "not a PROXY protocol header"),
    ],
)
def test_v2_invalid(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(data)


# --- incremental parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "full",
    [
        b"PROXY TCP4 203.0.113.1 203.0.113.11 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
        encode_v2("tcp", ("1.2.3.4", 1), ("5.6.7.8", 2)),
        encode_v2("udp", ("::1", 1), ("::2", 2)),
    ],
)
def test_truncated_returns_none(full: bytes) -> None:
    for cut in range(len(full)):
        assert parse(full[:cut]) is None, cut
    assert parse(full) is not None


def test_accepts_bytearray_and_memoryview() -> None:
    data = encode_v2("tcp", ("1.2.3.4", 1), ("5.6.7.8", 2))
    assert parse(bytearray(data)) == parse(data)
    assert parse(memoryview(data)) == parse(data)


# --- properties ------------------------------------------------------------------------

addr_pairs = st.one_of(
    st.tuples(st.tuples(v4, ports), st.tuples(v4, ports)),
    st.tuples(st.tuples(v6, ports), st.tuples(v6, ports)),
)


def _as_sent(
    pair: tuple[tuple[str, int], tuple[str, int]],
) -> tuple[tuple[str, int], tuple[str, int]]:
    """The pair as the header carries it: two IPv4-mapped addresses go as IPv4 (issue 16)."""
    (s, sp), (d, dp) = pair
    s4 = ipaddress.ip_address(s)
    d4 = ipaddress.ip_address(d)
    sm = s4 if s4.version == 4 else s4.ipv4_mapped
    dm = d4 if d4.version == 4 else d4.ipv4_mapped
    if sm is not None and dm is not None:
        return (str(sm), sp), (str(dm), dp)
    return pair


@given(pair=addr_pairs, tail=st.binary(max_size=20))
def test_v1_roundtrip(pair: tuple[tuple[str, int], tuple[str, int]], tail: bytes) -> None:
    data = encode_v1("tcp", *pair)
    src, dst = _as_sent(pair)
    assert len(data) <= V1_MAX
    assert parse(data + tail) == (ProxyHeader(1, "PROXY", "tcp", src, dst), len(data))


@given(pair=addr_pairs, proto=st.sampled_from(["tcp", "udp"]), tail=st.binary(max_size=20))
def test_v2_roundtrip(
    pair: tuple[tuple[str, int], tuple[str, int]], proto: str, tail: bytes
) -> None:
    data = encode_v2(proto, *pair)
    src, dst = _as_sent(pair)
    assert parse(data + tail) == (ProxyHeader(2, "PROXY", proto, src, dst), len(data))


def _outcome(data: bytes) -> object:
    try:
        return parse(data)
    except ValueError as exc:
        assert str(exc)
        return ValueError


junk = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=80).map(lambda b: SIG + b),
    st.from_regex(rb"PROXY (TCP4|TCP6|UNKNOWN)[ .:0-9a-f]{0,60}(\r\n)?", fullmatch=True),
)


@given(junk)
def test_junk_only_raises_value_error(data: bytes) -> None:
    result = _outcome(data)
    if isinstance(result, tuple):
        header, used = result
        assert 0 < used <= len(data)
        assert header.version in (1, 2)


@given(data=junk, extra=st.binary(max_size=50))
def test_more_bytes_never_change_a_decision(data: bytes, extra: bytes) -> None:
    # Once parse() accepts or rejects a prefix, appending bytes must not change its mind;
    # that is what lets a reader call it again after every recv().
    result = _outcome(data)
    if result is not None:
        assert _outcome(data + extra) == result


@given(data=junk)
def test_prefixes_of_valid_headers_need_more(data: bytes) -> None:
    result = _outcome(data)
    if isinstance(result, tuple):
        _, used = result
        for cut in range(used):
            assert _outcome(data[:cut]) is None
