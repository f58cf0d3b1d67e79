"""Password checks for basicauth: plain, htpasswd files with bcrypt, {SHA} and $apr1$ entries.

Every comparison of secrets is constant-time (hmac.compare_digest over digests of equal
length, so not even the length of a plain password leaks). bcrypt is deliberately slow and
APR1/MD5-crypt (1000 MD5 rounds in Python, about 2 ms) is not cheap either, so `is_slow()`
tells a caller to run them off the event loop; SHA1 and plain take microseconds.

`dummy_for(entry)` is an entry of the same kind (and bcrypt cost) for a password nobody
knows: checking a password of an unknown user against it costs what checking a known user's
does, so the time of a 401 does not tell whether the user exists (what Caddy 2 does too).

Hash formats (as Apache's htpasswd writes them):
    $2y$ / $2a$ / $2b$...   bcrypt (the `bcrypt` package; passwords past 72 bytes are cut, as
                            Apache does)
    $apr1$SALT$HASH         Apache's MD5 crypt (1000 rounds), implemented here
    $1$SALT$HASH            the same algorithm with the FreeBSD magic
    {SHA}BASE64             base64 of SHA-1 of the password
    anything else           the password itself (Apache does the same on platforms without
                            crypt)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

import bcrypt

from meshkit.base.safefile import MIB, FileReadError, read_regular_file

# An htpasswd file holds one short line per user: 4 MiB is tens of thousands of users, and
# the cap (with the regular-file check) keeps a FIFO or a device from hanging the reader.
MAX_FILE_BYTES = 4 * MIB

ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _to64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(ITOA64[value & 0x3F])
        value >>= 6
    return "".join(out)


def md5_crypt(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> str:
    """MD5-crypt as Apache (`$apr1$`) and FreeBSD (`$1$`) define it."""
    salt = salt[:8]
    ctx = password + magic + salt
    final = hashlib.md5(password + salt + password).digest()
    for remaining in range(len(password), 0, -16):
        ctx += final[: min(16, remaining)]
    i = len(password)
    while i:
        ctx += b"\x00" if i & 1 else password[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for i in range(1000):
        step = password if i & 1 else final
        if i % 3:
            step += salt
        if i % 7:
            step += password
        step += final if i & 1 else password
        final = hashlib.md5(step).digest()
    f = final
    encoded = (
        _to64((f[0] << 16) | (f[6] << 8) | f[12], 4)
        + _to64((f[1] << 16) | (f[7] << 8) | f[13], 4)
        + _to64((f[2] << 16) | (f[8] << 8) | f[14], 4)
        + _to64((f[3] << 16) | (f[9] << 8) | f[15], 4)
        + _to64((f[4] << 16) | (f[10] << 8) | f[5], 4)
        + _to64(f[11], 2)
    )
    return magic.decode() + salt.decode("latin-1") + "$" + encoded


def apr1(password: str, salt: str | None = None) -> str:
    """An `$apr1$` entry for `password` (a random 8-character salt unless given)."""
    if salt is None:
        salt = "".join(ITOA64[b & 0x3F] for b in os.urandom(8))
    return md5_crypt(password.encode(), salt.encode(), b"$apr1$")


def sha1_entry(password: str) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def _same(a: str, b: str) -> bool:
    """Constant-time equality that does not leak the lengths either."""
    return hmac.compare_digest(
        hashlib.sha256(a.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(b.encode("utf-8", "surrogateescape")).digest(),
    )


def kind(hashed: str) -> str:
    """bcrypt, apr1, md5, sha or plain."""
    if hashed.startswith(("$2a$", "$2b$", "$2y$", "$2x$")):
        return "bcrypt"
    if hashed.startswith("$apr1$"):
        return "apr1"
    if hashed.startswith("$1$"):
        return "md5"
    if hashed.startswith("{SHA}"):
        return "sha"
    return "plain"


def is_slow(hashed: str) -> bool:
    """Checking this entry takes long enough (bcrypt, APR1/MD5-crypt: milliseconds) to
    belong off the event loop."""
    return kind(hashed) in ("bcrypt", "apr1", "md5")


def _bcrypt_cost(hashed: str) -> int:
    try:
        cost = int(hashed.split("$")[2])
    except (IndexError, ValueError):
        return 12
    return cost if 4 <= cost <= 31 else 12


# kind (and bcrypt cost) -> a dummy entry; made once, on first use (for bcrypt that takes as
# long as one check, so callers make it off the event loop: verify_dummy does both there)
_dummies: dict[str, str] = {}


def dummy_for(hashed: str) -> str:
    """An entry of the same kind as `hashed` (for bcrypt: the same cost) for a random
    password. Verifying any password against it fails, in the time a real check takes."""
    k = kind(hashed)
    key = f"bcrypt-{_bcrypt_cost(hashed)}" if k == "bcrypt" else k
    dummy = _dummies.get(key)
    if dummy is not None:
        return dummy
    pw = secrets.token_urlsafe(16)
    if k == "bcrypt":
        dummy = bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=_bcrypt_cost(hashed))).decode()
    elif k == "apr1":
        dummy = apr1(pw)
    elif k == "md5":
        md5_salt = "".join(ITOA64[b & 0x3F] for b in os.urandom(8))
        dummy = md5_crypt(pw.encode(), md5_salt.encode(), b"$1$")
    elif k == "sha":
        dummy = sha1_entry(pw)
    else:
        dummy = pw
    _dummies[key] = dummy
    return dummy


def verify_dummy(hashed: str, password: str) -> bool:
    """Spend the time of verify(hashed, password) without knowing a real entry; always
    False. For a user that does not exist."""
    verify(dummy_for(hashed), password)
    return False


def verify(hashed: str, password: str) -> bool:
    """Does `password` match the htpasswd entry `hashed`?"""
    k = kind(hashed)
    pw = password.encode("utf-8", "surrogateescape")
    if k == "bcrypt":
        stored = hashed.encode()
        if stored.startswith((b"$2y$", b"$2x$")):
            stored = b"$2b$" + stored[4:]
        try:
            return bcrypt.checkpw(pw[:72], stored)
        except ValueError:
            return False
    if k in ("apr1", "md5"):
        magic = b"$apr1$" if k == "apr1" else b"$1$"
        salt = hashed[len(magic) :].split("$", 1)[0]
        return _same(md5_crypt(pw, salt.encode("latin-1"), magic), hashed)
    if k == "sha":
        digest = base64.b64encode(hashlib.sha1(pw).digest()).decode()
        return _same(digest, hashed[5:])
    return _same(password, hashed)


class HtpasswdError(ValueError):
    pass


def parse(text: str, source: str = "htpasswd") -> dict[str, str]:
    """user -> entry from an htpasswd file's text (blank lines and `#` comments skipped)."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, entry = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{source}:{number}: malformed line (no 'user:' before the hash)")
        users[user] = entry
    return users


@dataclass
class _Loaded:
    mtime_ns: int
    size: int
    users: dict[str, str]
    # (path, st_ino, st_dev, st_size, st_mtime_ns, st_ctime_ns) of the stat taken before
    # the read: the users above are what the file held while it stats so (a message.Validator)
    sig: tuple[str, int, int, int, int, int] | None = None


class HtpasswdFile:
    """An htpasswd file, read again when it changes (checked at most once a second)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._loaded: _Loaded | None = None
        self._checked = 0.0
        self.load()

    def load(self) -> dict[str, str]:
        """Read the file now; raises OSError or HtpasswdError."""
        st = os.stat(self.path)
        try:
            data = read_regular_file(self.path, MAX_FILE_BYTES, "htpasswd file")
        except FileReadError as exc:
            # callers catch OSError (and keep the users they had)
            raise OSError(exc.reason) from None
        users = parse(data.decode("utf-8", "surrogateescape"), self.path)
        sig = (self.path, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self._loaded = _Loaded(st.st_mtime_ns, st.st_size, users, sig)
        return users

    def validator(self, racy_ns: int) -> tuple[str, int, int, int, int, int] | None:
        """The file as a response validator for the users read last: an answer decided by
        them holds while the file stats the same (the lane's rule table keeps it so); None
        when nothing was read or the file had changed within `racy_ns` of now."""
        loaded = self._loaded
        if loaded is None or loaded.sig is None:
            return None
        if time.time_ns() - max(loaded.sig[4], loaded.sig[5]) <= racy_ns:
            return None
        return loaded.sig

    def users(self, now: float | None = None) -> dict[str, str]:
        t = time.monotonic() if now is None else now
        loaded = self._loaded
        if loaded is not None and t - self._checked < 1.0:
            return loaded.users
        self._checked = t
        try:
            st = os.stat(self.path)
            if loaded is None or (st.st_mtime_ns, st.st_size) != (loaded.mtime_ns, loaded.size):
                return self.load()
        except (OSError, HtpasswdError):
            pass  # keep what we had: a file being rewritten must not lock everyone out
        return loaded.users if loaded is not None else {}

    def entry(self, user: str) -> str | None:
        return self.users().get(user)
