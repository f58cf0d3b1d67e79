"""Sealed VXLAN datagrams for encrypted overlays (sans-IO), the pure-Python twin of
meshkit/csrc/vxlan/seal.c, with the ``cryptography`` package.

Wire format (all integers big-endian)::

    0      1      2      3      4          7      8        12          20         n-16    n
    +------+------+------+------+----------+------+--------+-----------+----------+-------+
    | 0x08 |  0   |  0   |cipher|   VNI    |  0   | key id | counter   | sealed   |  tag  |
    +------+------+------+------+----------+------+--------+-----------+ inner    +-------+
                                                                        frame

- bytes 0..8: the VXLAN header (RFC 7348), readable, so a node demultiplexes by VNI before it
  opens anything. Byte 3, a reserved byte, names the AEAD: 1 = AES-256-GCM, 2 =
  ChaCha20-Poly1305 (0 = a plain frame). A node seals with AES-256-GCM when its CPU has AES
  instructions (the ``aes`` flag in /proc/cpuinfo), else with ChaCha20-Poly1305; every node
  opens both.
- key id: the generation of the network's key the frame is sealed with.
- counter: 64 bits, one per frame and sender and key; it starts at the sender's clock in
  nanoseconds when the sender takes the key, so it never repeats across restarts.
- nonce (96 bits) = (the key's 4-byte salt XOR the sender's underlay IPv4) || counter: all
  nodes of a network share its key, the sender's address keeps their nonces apart.
- AAD = bytes 0..20 (VXLAN header, key id, counter); the 16-byte tag follows the sealed frame.

The cipher keys are derived from the network key the managers hand out: HMAC-SHA256(key,
"meshkit vxlan aes-256-gcm") and HMAC-SHA256(key, "meshkit vxlan chacha20-poly1305").

Receivers keep one anti-replay window per peer and key (``ReplayWindow``: a 2048-bit bitmap
as RFC 6479 describes, 1984 counters wide); a counter is recorded only once its frame opened.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshkit.net.vxlan import wire

AES256GCM = 1
CHACHA20POLY1305 = 2
CIPHER_NAMES = {AES256GCM: "aes-256-gcm", CHACHA20POLY1305: "chacha20-poly1305"}
SEAL_HLEN = 20  # VXLAN header + key id + counter
TAG_LEN = 16
OVERHEAD = SEAL_HLEN - wire.HEADER_LEN + TAG_LEN
REPLAY_WORDS = 32
REPLAY_WINDOW = REPLAY_WORDS * 64 - 64
MAX_SKEW_NS = 600 * 1_000_000_000
KEY_LEN = 32
SALT_LEN = 4
_MASK64 = (1 << 64) - 1


class SealError(ValueError):
    """Key material that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class NetKey:
    """One generation of a network's key: ``id``, the 32-byte key, the 4-byte salt."""

    id: int
    key: bytes
    salt: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 0xFFFFFFFF:
            raise SealError(f"key id {self.id} does not fit 32 bits")
        if len(self.key) != KEY_LEN or len(self.salt) != SALT_LEN:
            raise SealError(f"key {self.id}: want {KEY_LEN} key bytes and {SALT_LEN} salt bytes")

    @functools.cached_property
    def aes_key(self) -> bytes:
        return hmac.new(self.key, b"meshkit vxlan aes-256-gcm", hashlib.sha256).digest()

    @functools.cached_property
    def chacha_key(self) -> bytes:
        return hmac.new(self.key, b"meshkit vxlan chacha20-poly1305", hashlib.sha256).digest()

    @functools.cached_property
    def _aeads(self) -> dict[int, Any]:
        # the ``cryptography`` AEAD objects, made once per key (imported here: only encrypted
        # networks load it, and the import-linter contract light-proxies names this exception)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        return {
            AES256GCM: AESGCM(self.aes_key),
            CHACHA20POLY1305: ChaCha20Poly1305(self.chacha_key),
        }

    def aead(self, cipher: int) -> Any:
        """The AEAD object of ``cipher`` under this key; SealError for an unknown cipher."""
        try:
            return self._aeads[cipher]
        except KeyError:
            raise SealError(f"unknown cipher {cipher}") from None


def preferred_cipher(cpuinfo: str | None = None) -> int:
    """AES-256-GCM where the CPU has AES instructions, else ChaCha20-Poly1305."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / arm64
            return AES256GCM if "aes" in line.split(":", 1)[-1].split() else CHACHA20POLY1305
    return CHACHA20POLY1305


def nonce(key: NetKey, sender_ip: bytes, counter: int) -> bytes:
    head = bytes(a ^ b for a, b in zip(key.salt, sender_ip, strict=True))
    return head + struct.pack("!Q", counter & _MASK64)


def header(cipher: int, vni: int, key_id: int, counter: int) -> bytes:
    """The 20 bytes before the sealed frame (also the AAD)."""
    vx = bytearray(wire.encode_header(vni))
    vx[3] = cipher
    return bytes(vx) + struct.pack("!IQ", key_id, counter & _MASK64)


def seal(cipher: int, key: NetKey, sender_ip: bytes, counter: int, vni: int, frame: bytes) -> bytes:
    """The datagram carrying ``frame`` sealed with ``key`` (sender_ip: 4 bytes)."""
    aad = header(cipher, vni, key.id, counter)
    return aad + bytes(key.aead(cipher).encrypt(nonce(key, sender_ip, counter), frame, aad))


@dataclass(frozen=True)
class Sealed:
    """The readable parts of a sealed datagram."""

    cipher: int
    vni: int
    key_id: int
    counter: int


def parse(data: bytes) -> Sealed | str:
    """The header fields of a sealed datagram, or the drop reason (short / bad_flags /
    not_sealed)."""
    if len(data) < SEAL_HLEN + wire.ETH_HLEN + TAG_LEN:
        return "short"
    if not data[0] & wire.I_FLAG:
        return "bad_flags"
    if data[3] not in CIPHER_NAMES:
        return "not_sealed"
    key_id, counter = struct.unpack_from("!IQ", data, wire.HEADER_LEN)
    return Sealed(data[3], int.from_bytes(data[4:7], "big"), key_id, counter)


def open_frame(key: NetKey, sender_ip: bytes, data: bytes) -> bytes | str:
    """The inner frame of a sealed datagram, or the drop reason (as ``vx_open``)."""
    head = parse(data)
    if isinstance(head, str):
        return "not_sealed" if head == "bad_flags" else head
    if head.key_id != key.id:
        return "unknown_key"
    from cryptography.exceptions import InvalidTag

    try:
        return bytes(
            key.aead(head.cipher).decrypt(
                nonce(key, sender_ip, head.counter), data[SEAL_HLEN:], data[:SEAL_HLEN]
            )
        )
    except InvalidTag:
        return "bad_tag"


class ReplayWindow:
    """The anti-replay window of one peer and key (RFC 6479's bitmap; as vx_replay_*)."""

    __slots__ = ("bits", "seen", "top")

    def __init__(self) -> None:
        self.top = 0
        self.bits = [0] * REPLAY_WORDS
        self.seen = False

    def check(self, ctr: int, now_ns: int) -> str | None:
        """None when ``ctr`` may be accepted, else the drop reason."""
        if ctr > now_ns + MAX_SKEW_NS:
            return "too_new"
        if not self.seen or ctr > self.top:
            return None
        if self.top - ctr >= REPLAY_WINDOW:
            return "too_old"
        if self.bits[(ctr >> 6) % REPLAY_WORDS] >> (ctr & 63) & 1:
            return "replay"
        return None

    def update(self, ctr: int) -> None:
        """Record ``ctr`` (checked, and its frame opened)."""
        if not self.seen:
            self.bits = [0] * REPLAY_WORDS
            self.top = ctr
            self.seen = True
        elif ctr > self.top:
            cur, nxt = self.top >> 6, ctr >> 6
            for i in range(1, min(nxt - cur, REPLAY_WORDS) + 1):
                self.bits[(cur + i) % REPLAY_WORDS] = 0
            self.top = ctr
        self.bits[(ctr >> 6) % REPLAY_WORDS] |= 1 << (ctr & 63)

    def copy(self) -> ReplayWindow:
        out = ReplayWindow()
        out.top, out.bits, out.seen = self.top, list(self.bits), self.seen
        return out


def replay_run(counters: list[int], now_ns: int) -> list[str | None]:
    """The window over a sequence of counters, as ``vx_replay_run`` (for tests)."""
    win = ReplayWindow()
    out = []
    for ctr in counters:
        verdict = win.check(ctr, now_ns)
        if verdict is None:
            win.update(ctr)
        out.append(verdict)
    return out


def key_from_wire(entry: dict[str, object]) -> NetKey:
    """A NetKey from the managers' ``{"id", "key": base64 of key + salt}``; SealError when
    it is malformed."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(str(entry["key"]), validate=True)
        key_id = int(entry["id"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise SealError(f"malformed network key entry (fields {sorted(entry)})") from None
    return NetKey(key_id, raw[:KEY_LEN], raw[KEY_LEN:])
