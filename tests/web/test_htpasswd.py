"""htpasswd entries: APR1 (known vectors and openssl), {SHA}, bcrypt, plain; file reloads."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from meshkit.web import htpasswd

# Known vectors, checked against `openssl passwd -apr1 -salt abcdefgh secret` (OpenSSL 3) and
# `openssl passwd -1 -salt abcdefgh secret`.
APR1_SECRET = "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"
MD5_SECRET = "$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1"
# {SHA} of "password" (base64 of SHA-1), as `htpasswd -s` writes it
SHA_PASSWORD = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="


def test_apr1_known_vector() -> None:
    assert htpasswd.apr1("secret", "abcdefgh") == APR1_SECRET
    assert htpasswd.verify(APR1_SECRET, "secret")
    assert not htpasswd.verify(APR1_SECRET, "Secret")


def test_md5_crypt_known_vector() -> None:
    assert htpasswd.md5_crypt(b"secret", b"abcdefgh", b"$1$") == MD5_SECRET
    assert htpasswd.verify(MD5_SECRET, "secret")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize("password", ["a", "correct horse", "x" * 40, "pässwörd", ""])
def test_apr1_matches_openssl(password: str) -> None:
    out = subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out.startswith("$apr1$")
    assert htpasswd.verify(out, password)
    salt = out.split("$")[2]
    assert htpasswd.apr1(password, salt) == out
    assert not htpasswd.verify(out, password + "!")


def test_sha() -> None:
    assert htpasswd.sha1_entry("password") == SHA_PASSWORD
    assert htpasswd.verify(SHA_PASSWORD, "password")
    assert not htpasswd.verify(SHA_PASSWORD, "Password")


def test_bcrypt_all_prefixes() -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    assert htpasswd.is_slow(hashed)
    for prefix in ("$2b$", "$2a$", "$2y$"):
        entry = prefix + hashed[4:]
        if prefix == "$2a$":
            entry = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4, prefix=b"2a")).decode()
        assert htpasswd.verify(entry, "s3cret"), prefix
        assert not htpasswd.verify(entry, "s3cret!"), prefix


def test_bcrypt_long_password_is_cut_at_72_bytes() -> None:
    long = "p" * 80
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode()
    assert htpasswd.verify(hashed, long)
    assert not htpasswd.verify("$2b$04$garbage", "x")


def test_plain() -> None:
    assert htpasswd.kind("hunter2") == "plain"
    assert htpasswd.verify("hunter2", "hunter2")
    assert not htpasswd.verify("hunter2", "hunter")
    assert not htpasswd.is_slow("hunter2")


def test_parse() -> None:
    text = "# comment\n\nalice:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/\n  bob:{SHA}x=  \n"
    assert htpasswd.parse(text) == {"alice": APR1_SECRET, "bob": "{SHA}x="}
    with pytest.raises(htpasswd.HtpasswdError, match=":2:"):
        htpasswd.parse("ok:x\nno-colon\n", "f")


def test_file_reloads_when_changed(tmp_path: Path) -> None:
    path = tmp_path / ".htpasswd"
    path.write_text(f"alice:{APR1_SECRET}\n")
    f = htpasswd.HtpasswdFile(str(path))
    assert f.entry("alice") == APR1_SECRET
    assert f.entry("bob") is None
    path.write_text(f"alice:{APR1_SECRET}\nbob:{SHA_PASSWORD}\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    # checked at most once a second: ask as if a second had passed
    assert f.users(now=time.monotonic() + 5).get("bob") == SHA_PASSWORD


def test_file_gone_keeps_last_users(tmp_path: Path) -> None:
    path = tmp_path / ".htpasswd"
    path.write_text(f"alice:{APR1_SECRET}\n")
    f = htpasswd.HtpasswdFile(str(path))
    path.unlink()
    assert f.users(now=time.monotonic() + 5) == {"alice": APR1_SECRET}


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="apache2-utils not installed")
def test_apache_htpasswd_tool(tmp_path: Path) -> None:
    path = tmp_path / "h"
    for flag, user in (("-m", "m"), ("-s", "s"), ("-B", "b"), ("-p", "p")):
        create = ["-c"] if user == "m" else []
        subprocess.run(
            ["htpasswd", *create, "-b", flag, str(path), user, "pw"],
            check=True,
            capture_output=True,
        )
    users = htpasswd.HtpasswdFile(str(path)).users()
    for user in "msbp":
        assert htpasswd.verify(users[user], "pw"), user
