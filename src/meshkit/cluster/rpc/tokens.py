"""Join tokens and the raft secret (sans-IO).

A join token has the shape ``MKTKN-1-<digest>-<secret>`` (the shape of swarm's
``SWMTKN-1-...`` tokens):

- ``digest``: SHA-256 of the whole cluster CA bundle (PEM bytes) as a base-36 number in
  lower case, zero-padded to 50 characters. A joining node hashes the bundle a manager hands
  it and refuses the manager when the digests differ, so the token pins the CA.
- ``secret``: 16 random bytes as a base-36 number, zero-padded to 25 characters. The worker
  and the manager token share the digest and differ in the secret; rotating a token replaces
  its secret only.

Nothing here does I/O and no message ever contains a token's secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from meshkit.base.errors import MeshkitError

TOKEN_PREFIX = "MKTKN-1"
"""Product prefix and format version of a join token, joined by a dash."""

DIGEST_LEN = 50
"""Characters in the digest part: 2**256 needs 50 base-36 digits."""

SECRET_LEN = 25
"""Characters in the secret part: 2**128 needs 25 base-36 digits."""

SECRET_BYTES = 16
"""Random bytes in a token secret."""

RAFT_SECRET_BYTES = 32
"""Random bytes in the managers' raft secret."""

_ALPHABET = string.digits + string.ascii_lowercase
_ALLOWED = frozenset(_ALPHABET)


class TokenError(MeshkitError):
    """A join token that cannot be used; the message says what is wrong, never the secret."""


def _base36(value: int, width: int) -> str:
    """``value`` in lower-case base 36, zero-padded on the left to ``width`` characters."""
    if value < 0:
        raise ValueError("base36 of a negative number")
    digits: list[str] = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_bundle_pem: bytes) -> str:
    """SHA-256 of the whole CA bundle, in base 36 (lower case), zero-padded to 50 characters."""
    value = int.from_bytes(hashlib.sha256(ca_bundle_pem).digest(), "big")
    return _base36(value, DIGEST_LEN)


def new_secret() -> str:
    """A fresh token secret: 16 random bytes (``secrets``), base 36, zero-padded to 25."""
    value = int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big")
    return _base36(value, SECRET_LEN)


def new_raft_secret() -> str:
    """A fresh secret for the managers' raft transport: 32 random bytes, URL-safe base 64.

    pysyncobj derives a Fernet key from it (``SyncObjConf(password=...)``); only managers
    ever receive it, and only over mutual TLS.
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(RAFT_SECRET_BYTES)).decode("ascii")


def format_token(digest: str, secret: str) -> str:
    """The token text ``MKTKN-1-<digest>-<secret>``; both parts are checked first."""
    _check_part("CA digest", digest, DIGEST_LEN, 256)
    _check_part("secret", secret, SECRET_LEN, 8 * SECRET_BYTES)
    return f"{TOKEN_PREFIX}-{digest}-{secret}"


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token: the CA digest it pins and its secret."""

    digest: str
    secret: str

    def __str__(self) -> str:
        """The token text, ``MKTKN-1-<digest>-<secret>``."""
        return format_token(self.digest, self.secret)

    def __repr__(self) -> str:
        """A repr that does not leak the secret into logs and tracebacks."""
        return f"JoinToken(digest={self.digest!r}, secret=<{len(self.secret)} chars>)"


def _check_part(name: str, text: str, length: int, bits: int) -> None:
    """Raise TokenError when a token part has the wrong length, characters or range.

    The message names the part and what is wrong with it, never its value.
    """
    if len(text) != length:
        raise TokenError(
            f"invalid join token: the {name} part has {len(text)} characters, expected {length}"
        )
    bad = sorted({ch for ch in text if ch not in _ALLOWED})
    if bad:
        kinds = []
        if any(ch in string.ascii_uppercase for ch in bad):
            kinds.append("upper-case letters")
        if any(ch not in string.ascii_uppercase for ch in bad):
            kinds.append("characters other than 0-9 and a-z")
        raise TokenError(
            f"invalid join token: the {name} part contains {' and '.join(kinds)} "
            "(only 0-9 and a-z are allowed)"
        )
    if int(text, 36) >= 1 << bits:
        raise TokenError(f"invalid join token: the {name} part is out of range for {bits} bits")


def parse_token(text: str) -> JoinToken:
    """Parse ``MKTKN-1-<digest>-<secret>``; surrounding white space is ignored.

    Raises TokenError saying exactly what is malformed (prefix, version, number of parts,
    lengths, characters) without ever echoing the secret.
    """
    text = text.strip()
    if not text:
        raise TokenError("invalid join token: the token is empty")
    parts = text.split("-")
    product = parts[0]
    if product != "MKTKN":
        if product == "SWMTKN":
            raise TokenError(
                "invalid join token: this is a Docker swarm token (SWMTKN-...), "
                "not a meshkit token (MKTKN-1-...); ask a meshkit manager for "
                "`meshkit node join-token worker`"
            )
        raise TokenError(
            f"invalid join token: it must start with {TOKEN_PREFIX}- "
            f"(got {len(product)} characters before the first dash instead of MKTKN)"
        )
    if len(parts) < 2 or not parts[1]:
        raise TokenError("invalid join token: the version is missing after MKTKN-")
    version = parts[1]
    if version != "1":
        shown = version if len(version) <= 8 and version.isalnum() else "?"
        raise TokenError(
            f"invalid join token: unsupported token version {shown!r} "
            "(this meshkit understands version 1)"
        )
    if len(parts) != 4:
        raise TokenError(
            f"invalid join token: expected 4 dash-separated parts "
            f"(MKTKN, 1, CA digest, secret), got {len(parts)}"
        )
    digest, secret = parts[2], parts[3]
    _check_part("CA digest", digest, DIGEST_LEN, 256)
    _check_part("secret", secret, SECRET_LEN, 8 * SECRET_BYTES)
    return JoinToken(digest, secret)


def new_token(ca_bundle_pem: bytes) -> JoinToken:
    """A new token for this CA bundle, with a fresh secret."""
    return JoinToken(ca_digest(ca_bundle_pem), new_secret())


def token_matches(presented: str, expected: str) -> bool:
    """True when the presented token text equals the expected one (constant-time compare).

    Both are compared whole, as UTF-8 bytes, with ``hmac.compare_digest``; surrounding white
    space of the presented token is ignored.
    """
    return hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8"))
