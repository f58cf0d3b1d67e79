"""Sealing and opening VXLAN frames for encrypted overlays: the C plane's functions
(meshkit/csrc/vxlan/seal.c) against the pure-Python twin (meshkit.net.vxlan.seal), byte for
byte, each opening what the other sealed; tampering, wrong keys and the anti-replay window."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.net.vxlan import seal, wire
from meshkit.net.vxlan.plane import load_vxlan_ffi

MOD = load_vxlan_ffi()
needs_c = pytest.mark.skipif(MOD is None, reason="meshkit._vxlan_ffi not built or disabled")
IP = bytes([198, 18, 0, 11])

keys = st.builds(
    seal.NetKey,
    st.integers(0, 0xFFFFFFFF),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=4, max_size=4),
)
frames = st.binary(min_size=wire.ETH_HLEN, max_size=2000)
ciphers = st.sampled_from([seal.AES256GCM, seal.CHACHA20POLY1305])
counters = st.integers(0, (1 << 64) - 1)
vnis = st.integers(0, wire.MAX_VNI)


def c_key(key: seal.NetKey) -> Any:
    assert MOD is not None
    ck = MOD.ffi.new("vx_key_t *")
    ck.id = key.id
    ck.aes = key.aes_key
    ck.chacha = key.chacha_key
    ck.salt = key.salt
    return ck


def c_seal(cipher: int, key: seal.NetKey, ip: bytes, ctr: int, vni: int, frame: bytes) -> bytes:
    assert MOD is not None
    out = MOD.ffi.new("uint8_t[]", len(frame) + seal.SEAL_HLEN + seal.TAG_LEN)
    n = MOD.lib.vx_seal(cipher, c_key(key), int.from_bytes(ip, "big"), ctr, vni, frame,
                        len(frame), out)  # fmt: skip
    assert n == len(frame) + seal.SEAL_HLEN + seal.TAG_LEN
    return bytes(MOD.ffi.buffer(out, n))


def c_open(key: seal.NetKey, ip: bytes, data: bytes) -> bytes | str:
    assert MOD is not None
    out = MOD.ffi.new("uint8_t[]", max(len(data), 1))
    n = MOD.lib.vx_open(c_key(key), int.from_bytes(ip, "big"), data, len(data), out)
    if n < 0:
        return wire.DROP_REASONS[-1 - n]
    return bytes(MOD.ffi.buffer(out, n))


def test_python_round_trip_and_layout() -> None:
    key = seal.NetKey(7, bytes(range(32)), b"\x01\x02\x03\x04")
    frame = b"\x02\x4d" * 7 + b"marker-in-the-clear"
    data = seal.seal(seal.AES256GCM, key, IP, 99, 4097, frame)
    assert data[:8] == bytes([0x08, 0, 0, seal.AES256GCM, 0, 0x10, 0x01, 0])
    assert data[8:12] == (7).to_bytes(4, "big") and data[12:20] == (99).to_bytes(8, "big")
    assert len(data) == len(frame) + wire.HEADER_LEN + seal.OVERHEAD
    assert b"marker" not in data
    assert seal.open_frame(key, IP, data) == frame
    # the sender's address is in the nonce: the same bytes from another peer do not open
    assert seal.open_frame(key, bytes([198, 18, 0, 12]), data) == "bad_tag"
    assert seal.open_frame(seal.NetKey(8, key.key, key.salt), IP, data) == "unknown_key"
    assert seal.open_frame(key, IP, data[:40]) == "short"
    assert seal.open_frame(key, IP, wire.encode_header(4097) + frame + bytes(40)) == "not_sealed"


def test_preferred_cipher_reads_cpu_flags() -> None:
    assert seal.preferred_cipher("flags\t\t: fpu sse2 aes avx\n") == seal.AES256GCM
    assert seal.preferred_cipher("flags\t\t: fpu sse2 avx\n") == seal.CHACHA20POLY1305
    assert seal.preferred_cipher("Features\t: fp asimd aes pmull\n") == seal.AES256GCM
    assert seal.preferred_cipher("") == seal.CHACHA20POLY1305


def test_key_material_is_checked() -> None:
    with pytest.raises(seal.SealError, match="32 key bytes"):
        seal.NetKey(1, bytes(31), bytes(4))
    with pytest.raises(seal.SealError, match="malformed network key entry"):
        seal.key_from_wire({"id": 1, "key": "not base64!"})
    with pytest.raises(seal.SealError, match="32 key bytes"):
        seal.key_from_wire({"id": 1, "key": "AAAA"})


@needs_c
@settings(max_examples=150, deadline=None)
@given(ciphers, keys, counters, vnis, frames)
def test_c_and_python_seal_the_same_bytes(
    cipher: int, key: seal.NetKey, ctr: int, vni: int, frame: bytes
) -> None:
    py = seal.seal(cipher, key, IP, ctr, vni, frame)
    c = c_seal(cipher, key, IP, ctr, vni, frame)
    assert c == py
    assert c_open(key, IP, py) == frame
    assert seal.open_frame(key, IP, c) == frame


@needs_c
@settings(max_examples=150, deadline=None)
@given(ciphers, keys, frames, st.data())
def test_any_flipped_bit_is_refused_by_both(
    cipher: int, key: seal.NetKey, frame: bytes, data: st.DataObject
) -> None:
    good = bytearray(seal.seal(cipher, key, IP, 5, 4096, frame))
    pos = data.draw(st.integers(0, len(good) - 1))
    bit = data.draw(st.integers(0, 7))
    good[pos] ^= 1 << bit
    bad = bytes(good)
    py, c = seal.open_frame(key, IP, bad), c_open(key, IP, bad)
    assert py == c
    assert isinstance(py, str)  # never a frame: which reason depends on the byte
    if pos >= seal.SEAL_HLEN or pos in (1, 2, 4, 5, 6, 7) or pos >= 12:
        assert py == "bad_tag"


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6000), max_size=300), st.integers(0, 10_000))
def test_replay_window_c_matches_python(steps: list[int], now: int) -> None:
    seq = [s * 7 % 5000 + (s & 1) * 3000 for s in steps]  # forwards, backwards, repeats
    assert MOD is not None
    verdicts = MOD.ffi.new("int[]", max(len(seq), 1))
    MOD.lib.vx_replay_run(seq, len(seq), now, verdicts)
    c = [None if v < 0 else wire.DROP_REASONS[v] for v in list(verdicts)[: len(seq)]]
    assert c == seal.replay_run(seq, now)


def test_replay_window_rules() -> None:
    now = time.time_ns()
    base = now - 10_000
    seq = [base, base + 1, base + 1, base + 5, base + 3, base + 3, base + 5000,
           base + 5000 - seal.REPLAY_WINDOW, base + 5001 - seal.REPLAY_WINDOW,
           now + seal.MAX_SKEW_NS + 1, base + 4999]  # fmt: skip
    assert seal.replay_run(seq, now) == [None, None, "replay", None, None, "replay", None,
                                         "too_old", None, "too_new", None]  # fmt: skip
    if MOD is not None:
        verdicts = MOD.ffi.new("int[]", len(seq))
        MOD.lib.vx_replay_run(seq, len(seq), now, verdicts)
        got = [None if v < 0 else wire.DROP_REASONS[v] for v in verdicts]
        assert got == seal.replay_run(seq, now)


def test_drop_reasons_match_the_c_enum() -> None:
    if MOD is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")
    names = [MOD.ffi.string(MOD.lib.vx_drop_name(i)).decode()
             for i in range(MOD.lib.VX_DROP_COUNT)]  # fmt: skip
    assert tuple(names) == wire.DROP_REASONS
    assert MOD.lib.VX_SEAL_OVERHEAD == seal.OVERHEAD
    assert MOD.lib.VX_REPLAY_WINDOW == seal.REPLAY_WINDOW


def test_random_keys_differ_per_cipher() -> None:
    key = seal.NetKey(1, os.urandom(32), os.urandom(4))
    assert key.aes_key != key.chacha_key != key.key
