"""Join tokens: shape, parsing errors (never echoing the secret), constant-time matching."""

from __future__ import annotations

import base64
import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.cluster.rpc import tokens
from meshkit.cluster.rpc.tokens import (
    TOKEN_PREFIX,
    JoinToken,
    TokenError,
    ca_digest,
    format_token,
    new_raft_secret,
    new_secret,
    parse_token,
    token_matches,
)

BUNDLE = b"-----BEGIN CERTIFICATE-----\nnot really a certificate\n-----END CERTIFICATE-----\n"
ALPHABET = set(string.digits + string.ascii_lowercase)


def test_digest_is_sha256_in_base36_padded_to_50() -> None:
    digest = ca_digest(BUNDLE)
    assert len(digest) == 50
    assert set(digest) <= ALPHABET
    assert int(digest, 36) == int.from_bytes(hashlib.sha256(BUNDLE).digest(), "big")


def test_small_values_are_zero_padded() -> None:
    assert tokens._base36(0, 25) == "0" * 25
    assert tokens._base36(35, 3) == "00z"
    assert tokens._base36(36, 3) == "010"


@given(st.binary(max_size=64))
def test_digest_round_trips(data: bytes) -> None:
    digest = ca_digest(data)
    assert len(digest) == 50
    assert int(digest, 36).to_bytes(32, "big") == hashlib.sha256(data).digest()


def test_secret_shape_and_randomness() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert len(secret) == 25
        assert set(secret) <= ALPHABET
        assert int(secret, 36) < 1 << 128


def test_raft_secret_is_32_bytes_urlsafe() -> None:
    secret = new_raft_secret()
    assert len(base64.urlsafe_b64decode(secret)) == 32
    assert new_raft_secret() != secret


def test_format_and_parse_round_trip() -> None:
    digest, secret = ca_digest(BUNDLE), new_secret()
    text = format_token(digest, secret)
    assert text == f"MKTKN-1-{digest}-{secret}"
    assert text.startswith(TOKEN_PREFIX + "-")
    token = parse_token(text)
    assert token == JoinToken(digest, secret)
    assert str(token) == text
    assert parse_token(f"  {text}\n") == token
    assert secret not in repr(token)


def test_worker_and_manager_tokens_share_the_digest() -> None:
    worker = tokens.new_token(BUNDLE)
    manager = tokens.new_token(BUNDLE)
    assert worker.digest == manager.digest
    assert worker.secret != manager.secret


def _good() -> tuple[str, str]:
    return ca_digest(BUNDLE), new_secret()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d, s: "", "empty"),
        (lambda d, s: f"XXTKN-1-{d}-{s}", "must start with MKTKN-"),
        (lambda d, s: f"SWMTKN-1-{d}-{s}", "Docker swarm token"),
        (lambda d, s: f"mktkn-1-{d}-{s}", "must start with MKTKN-"),
        (lambda d, s: f"MKTKN1{d}{s}", "must start with MKTKN-"),
        (lambda d, s: "MKTKN-", "version is missing"),
        (lambda d, s: f"MKTKN-2-{d}-{s}", "unsupported token version '2'"),
        (lambda d, s: f"MKTKN-1-{d}", "expected 4 dash-separated parts"),
        (lambda d, s: f"MKTKN-1-{d}-{s}-extra", "expected 4 dash-separated parts"),
        (lambda d, s: f"MKTKN-1-{d[:-1]}-{s}", "CA digest part has 49 characters, expected 50"),
        (lambda d, s: f"MKTKN-1-{d}0-{s}", "CA digest part has 51 characters, expected 50"),
        (lambda d, s: f"MKTKN-1-{d}-{s[:-2]}", "secret part has 23 characters, expected 25"),
        (lambda d, s: f"MKTKN-1-{d}-{s}00", "secret part has 27 characters, expected 25"),
        (lambda d, s: f"MKTKN-1-{d}-{s[:-1]}!", "secret part contains characters other than"),
        (lambda d, s: f"MKTKN-1-{d}-{s.upper()}Q"[: 8 + 51 + 25], "secret part contains"),
        (lambda d, s: f"MKTKN-1-{d[:-1]}_-{s}", "CA digest part contains characters other"),
        (lambda d, s: f"MKTKN-1-{d}-{'z' * 25}", "secret part is out of range"),
        (lambda d, s: f"MKTKN-1-{'z' * 50}-{s}", "CA digest part is out of range"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(make: object, expected: str) -> None:
    digest, secret = _good()
    text = make(digest, secret)  # type: ignore[operator]
    with pytest.raises(TokenError, match="invalid join token") as info:
        parse_token(text)
    message = str(info.value)
    assert expected in message
    assert secret not in message
    assert secret.upper() not in message
    assert secret[:-1] not in message and secret[:-2] not in message


def test_upper_case_secret_is_named() -> None:
    digest, secret = _good()
    with pytest.raises(TokenError, match="upper-case letters"):
        parse_token(f"MKTKN-1-{digest}-{'A' * 25}")
    del secret


def test_format_checks_its_parts() -> None:
    with pytest.raises(TokenError):
        format_token("abc", new_secret())
    with pytest.raises(TokenError):
        format_token(ca_digest(BUNDLE), "abc")


def test_token_matches_whole_token() -> None:
    token = str(tokens.new_token(BUNDLE))
    other = str(JoinToken(parse_token(token).digest, new_secret()))
    assert token_matches(token, token)
    assert token_matches(f" {token}\n", token)
    assert not token_matches(other, token)
    assert not token_matches(token[:-1], token)
    assert not token_matches("", token)
    assert not token_matches("MKTKN-1-é", token)
