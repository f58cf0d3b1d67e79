"""meshkit.web.h2hpack: remembered HPACK blocks decode to what was encoded, across table
changes (new entries, evictions, size updates), and inbound validation is skipped only for a
block already seen on the connection."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.exceptions
import pytest
from hpack import Decoder, Encoder

from meshkit.web.h2hpack import MemoDecoder, MemoEncoder


def _fields(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    out = [(b":status", rng.choice([b"200", b"304", b"404"]))]
    out.append((b"server", b"meshkit"))
    out.append((b"date", b"Sun, 06 Dec 2026 16:%02d:00 GMT" % rng.randrange(3)))
    for i in range(n):
        out.append((b"x-f%d" % rng.randrange(20), b"v" * rng.randrange(1, 300) + b"%d" % i))
    return out


def test_memo_encoder_round_trips_through_a_plain_decoder() -> None:
    rng = random.Random(7)
    enc, dec = MemoEncoder(), Decoder()
    pool = [_fields(rng, rng.randrange(0, 4)) for _ in range(12)]
    for step in range(2000):
        fields = rng.choice(pool)
        if step == 900:  # the peer shrinks the table: a size update and evictions
            enc.header_table_size = 512
            dec.max_allowed_table_size = 512
        block = enc.encode(fields)
        assert dec.decode(block, raw=True) == fields


def test_memo_encoder_remembers_only_blocks_that_left_the_table_alone() -> None:
    enc = MemoEncoder()
    fields = [(b":status", b"200"), (b"etag", b'"abc"')]
    first = enc.encode(fields)  # adds etag to the table
    second = enc.encode(fields)  # all indexed now
    assert first != second
    assert enc.encode(fields) == second
    assert enc._memo == {tuple(fields): second}
    enc.encode([(b":status", b"200"), (b"etag", b'"new"')])  # a new entry: forget
    assert enc._memo == {}
    dec = Decoder()
    for block in (first, second):
        assert dec.decode(block, raw=True) == fields


def test_memo_decoder_matches_a_plain_decoder() -> None:
    rng = random.Random(11)
    enc = Encoder()
    memo, plain = MemoDecoder(65536), Decoder()
    pool = [_fields(rng, rng.randrange(0, 4)) for _ in range(10)]
    hits = 0
    for step in range(2000):
        if step == 1200:
            enc.header_table_size = 256
        block = enc.encode(rng.choice(pool))
        if block in memo._memo and memo.header_table.changes == memo._stamp:  # type: ignore[attr-defined]
            hits += 1
        assert list(memo.decode(block, raw=True)) == list(plain.decode(block, raw=True))
    assert hits > 100


def test_validation_is_skipped_only_for_a_block_seen_before() -> None:
    config = h2.config.H2Configuration(client_side=False)
    memo = MemoDecoder(65536, config)
    enc = Encoder()
    fields = [(b":method", b"GET"), (b":path", b"/a")]
    memo.decode(enc.encode(fields), raw=True)  # adds :path /a to the table: not remembered
    assert config.validate_inbound_headers is True
    block = enc.encode(fields)  # all indexed now
    memo.decode(block, raw=True)  # first time: validated, remembered
    assert config.validate_inbound_headers is True
    assert list(memo.decode(block, raw=True)) == fields
    assert config.validate_inbound_headers is False
    memo.decode(enc.encode([(b"x-other", b"1")]), raw=True)
    assert config.validate_inbound_headers is True


def _server() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=False, header_encoding=None, normalize_inbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.encoder = MemoEncoder()
    conn.decoder = MemoDecoder(conn.DEFAULT_MAX_HEADER_LIST_SIZE, config)
    conn.initiate_connection()
    return conn


def _client(validate: bool = True) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=validate, normalize_outbound_headers=validate
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a.test")]


def test_an_invalid_head_is_a_connection_error_even_when_repeated() -> None:
    server, client = _server(), _client(validate=False)
    server.receive_data(client.data_to_send())
    bad = [*REQUEST, ("X-Upper", "1")]
    for sid in (1, 3):
        client.send_headers(sid, bad, end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError):
        server.receive_data(client.data_to_send())


def test_repeated_valid_heads_still_make_requests() -> None:
    server, client = _server(), _client()
    server.receive_data(client.data_to_send())
    got = []
    for sid in range(1, 40, 2):
        client.send_headers(sid, [*REQUEST, ("accept", "*/*")], end_stream=True)
        for ev in server.receive_data(client.data_to_send()):
            if hasattr(ev, "headers") and ev.headers:
                got.append(ev.headers)
    assert len(got) == 20
    assert all(h == got[0] for h in got)
    assert server.config.validate_inbound_headers is False  # the later ones came from memory
