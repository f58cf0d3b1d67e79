"""The sans-IO FastCGI record layer and CGI response-head parser: exact bytes, round trips
(hypothesis) and input cut at every possible place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.records import Decoder, ProtocolError, Record
from meshkit.web.fastcgi.response import HeadError, parse_head


def test_record_header_layout_is_big_endian_and_padded() -> None:
    data = records.encode_record(records.STDOUT, 0x0102, b"abc")
    # version 1, type 6, request id 0x0102, length 3, padding 5, reserved 0
    assert data[:8] == bytes([1, 6, 0x01, 0x02, 0x00, 0x03, 5, 0])
    assert data[8:11] == b"abc" and data[11:] == b"\0" * 5
    assert len(data) % 8 == 0


def test_begin_and_end_request_bodies() -> None:
    begin = records.begin_request(1, keep_conn=True)
    assert begin == bytes([1, 1, 0, 1, 0, 8, 0, 0]) + bytes([0, 1, 1, 0, 0, 0, 0, 0])
    assert records.parse_begin_request(begin[8:]) == (records.RESPONDER, True)
    assert records.parse_begin_request(records.begin_request(1, keep_conn=False)[8:])[1] is False
    end = records.end_request(1, 0x01020304, records.OVERLOADED)
    assert end[8:] == bytes([1, 2, 3, 4, 2, 0, 0, 0])
    parsed = records.parse_end_request(end[8:])
    assert parsed.app_status == 0x01020304 and parsed.protocol_status == records.OVERLOADED
    with pytest.raises(ProtocolError, match="END_REQUEST body is 3 bytes"):
        records.parse_end_request(b"abc")


def test_pairs_use_one_or_four_byte_lengths() -> None:
    assert records.encode_pairs([(b"A", b"bc")]) == b"\x01\x02Abc"
    long_value = b"v" * 200
    enc = records.encode_pairs([(b"N", long_value)])
    # 1-byte name length, 4-byte value length with the top bit set
    assert enc[:5] == b"\x01\x80\x00\x00\xc8"
    assert records.decode_pairs(enc) == [(b"N", long_value)]
    enc = records.encode_pairs([(b"x" * 127, b""), (b"y" * 128, b"z")])
    assert enc[0] == 127 and enc[1] == 0
    assert records.decode_pairs(enc) == [(b"x" * 127, b""), (b"y" * 128, b"z")]


@pytest.mark.parametrize("data", [b"\x05", b"\x01\x05ab", b"\x80\x00", b"\x01"])
def test_truncated_pairs_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="cut short"):
        records.decode_pairs(data)


def test_long_content_splits_into_records() -> None:
    content = bytes(range(256)) * 600  # 153600 bytes: three records
    data = records.encode_record(records.STDIN, 7, content)
    recs = Decoder().feed(data)
    assert [len(r.content) for r in recs] == [65535, 65535, 153600 - 2 * 65535]
    assert b"".join(r.content for r in recs) == content
    assert all(r.type == records.STDIN and r.request_id == 7 for r in recs)


def test_request_in_one_buffer() -> None:
    params = records.encode_pairs([(b"SCRIPT_FILENAME", b"/srv/index.php")])
    data = records.encode_request(1, params, b"")
    recs = Decoder().feed(data)
    assert [r.type for r in recs] == [
        records.BEGIN_REQUEST,
        records.PARAMS,
        records.PARAMS,
        records.STDIN,
    ]
    assert recs[2].content == b"" and recs[3].content == b""
    assert records.decode_pairs(recs[1].content) == [(b"SCRIPT_FILENAME", b"/srv/index.php")]
    # stdin=None leaves STDIN to be streamed afterwards
    assert [r.type for r in Decoder().feed(records.encode_request(1, params, None))] == [
        records.BEGIN_REQUEST,
        records.PARAMS,
        records.PARAMS,
    ]


def test_decoder_accepts_any_padding_and_waits_for_partial_records() -> None:
    # a peer may pad differently from us (here: 3 bytes of padding after 2 of content)
    raw = bytes([1, records.STDOUT, 0, 1, 0, 2, 3, 0]) + b"hi" + b"\0\0\0"
    d = Decoder()
    assert d.feed(raw[:9]) == []
    assert d.pending == 9
    assert d.feed(raw[9:12]) == []  # content complete, padding not yet
    assert d.feed(raw[12:]) == [Record(records.STDOUT, 1, b"hi")]
    assert d.pending == 0


def test_decoder_refuses_other_versions() -> None:
    with pytest.raises(ProtocolError, match="unsupported FastCGI version 2"):
        Decoder().feed(bytes([2, 6, 0, 1, 0, 0, 0, 0]))


records_st = st.lists(
    st.tuples(
        st.sampled_from([records.STDOUT, records.STDERR, records.END_REQUEST, records.STDIN]),
        st.integers(0, 0xFFFF),
        st.binary(max_size=300),
    ),
    max_size=12,
)


@given(records_st, st.lists(st.integers(1, 50), max_size=40))
def test_round_trip_whatever_the_cuts(recs: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    data = b"".join(records.encode_record(t, rid, c) for t, rid, c in recs)
    d = Decoder()
    out: list[Record] = []
    pos = 0
    for n in cuts:
        out += d.feed(data[pos : pos + n])
        pos += n
    out += d.feed(data[pos:])
    assert out == [Record(t, rid, c) for t, rid, c in recs]
    assert d.pending == 0


@given(st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=10))
def test_pairs_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert records.decode_pairs(records.encode_pairs(pairs)) == pairs


@given(st.binary(max_size=200_000).filter(lambda b: len(b) != 0))
def test_stream_round_trip(content: bytes) -> None:
    data = records.encode_stream(records.STDOUT, 1, content)
    recs = Decoder().feed(data)
    assert recs[-1].content == b""
    assert b"".join(r.content for r in recs) == content


# --- the CGI response head ------------------------------------------------------------------


def test_head_status_location_and_headers() -> None:
    buf = b"Status: 404 Not Found\r\nX-A: 1\r\nContent-type: text/html\r\n\r\nbody"
    head = parse_head(buf)
    assert head is not None
    assert head.status == 404
    assert head.headers.items() == [("X-A", "1"), ("Content-type", "text/html")]
    assert buf[head.body_start :] == b"body"
    head = parse_head(b"Location: /x\r\n\r\n")
    assert head is not None and head.status == 302
    head = parse_head(b"Status: 301\r\nLocation: /x\r\n\r\n")
    assert head is not None and head.status == 301
    head = parse_head(b"X-Powered-By: PHP\n\nbare LF")
    assert head is not None and head.status == 200
    assert head.headers.get("x-powered-by") == "PHP"


def test_head_drops_hop_by_hop_and_reads_content_length() -> None:
    head = parse_head(
        b"Connection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    )
    assert head is not None
    assert head.headers.items() == [("Content-Length", "5")]
    assert head.content_length == 5


def test_head_incomplete_then_complete() -> None:
    buf = b"Status: 200 OK\r\nX-A: 1\r\n\r\nrest"
    for i in range(len(buf) - 4 + 3):
        if parse_head(buf[:i]) is not None:
            assert i >= len(buf) - 4
    assert parse_head(buf) is not None


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"Status: abc\r\n\r\n", "invalid Status"),
        (b"Status: 999 Huge\r\n\r\n", "invalid Status"),
        (b"no colon here\r\n\r\n", "malformed header line"),
        (b"Bad Name: x\r\n\r\n", "malformed header line"),
        (b"Content-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"X: " + b"a" * 70_000, "longer than"),
    ],
)
def test_head_errors(buf: bytes, message: str) -> None:
    with pytest.raises(HeadError, match=message):
        parse_head(buf)


# --- whole_reply, the one-read shortcut, against the Decoder ----------------------------------

_RECORD = st.tuples(
    st.sampled_from([records.STDOUT] * 4 + [records.STDERR, records.END_REQUEST, 11]),
    st.sampled_from([1] * 6 + [2]),
    st.binary(max_size=40),
    st.integers(0, 9),  # padding: any amount is legal
)


def _raw(rtype: int, rid: int, content: bytes, pad: int) -> bytes:
    return (
        bytes([1, rtype])
        + rid.to_bytes(2, "big")
        + len(content).to_bytes(2, "big")
        + (bytes([pad, 0]) + content + b"\0" * pad)
    )


@given(st.lists(_RECORD, max_size=6), st.integers(0, 8), st.booleans())
def test_whole_reply_agrees_with_the_decoder(
    recs: list[tuple[int, int, bytes, int]], cut: int, end: bool
) -> None:
    if end:
        recs = [*recs, (records.END_REQUEST, 1, bytes(range(8)), 0)]
    data = b"".join(_raw(*r) for r in recs)
    data = data[: len(data) - cut] if cut and data else data
    got = records.whole_reply(data)
    decoder = Decoder()
    try:
        decoded = decoder.feed(data)
    except ProtocolError:
        assert got is None
        return
    # whole and alone: STDOUT records for request 1, then one END_REQUEST ending the data
    simple = (
        bool(decoded)
        and not decoder.pending
        and decoded[-1].type == records.END_REQUEST
        and len(decoded[-1].content) >= 8
        and all(r.request_id == 1 for r in decoded)
        and all(r.type == records.STDOUT for r in decoded[:-1])
    )
    if not simple:
        assert got is None
        return
    assert got is not None
    stdout, end_request = got
    assert stdout == b"".join(r.content for r in decoded[:-1])
    assert end_request == records.parse_end_request(decoded[-1].content)


def test_encode_request_shortcut_matches_the_general_encoding() -> None:
    for params in (b"\x01\x01ab", b"x" * 65535, b"y" * 70000, b""):
        for stdin in (b"", b"body", None):
            want = records.begin_request(1) + records.encode_stream(records.PARAMS, 1, params)
            if stdin is not None:
                want += records.encode_stream(records.STDIN, 1, stdin)
            assert records.encode_request(1, params, stdin) == want
