"""Autolock: a manager's secrets at rest encrypted with an unlock key only people hold.

With autolock on (`node init --autolock`, `cluster update --autolock=true`) each manager keeps
the files that open the cluster's secrets encrypted under the cluster's unlock key:

    raft/secret   the raft secret (pysyncobj's password: who may take part in raft)
    raft/datakey  the cluster data key, which seals the CA key, the join secrets, the raft
                  secret and every secret value in the replicated state (sealing.py)
    certs/node.key  the manager's TLS key (a renewal writes the new one in clear; the
                  manager locks it within half a second)

as ``<name>.locked`` (no clear copy is kept): ``mklock1:`` + base64(12-byte nonce + AES-256-GCM
ciphertext and tag), the key derived from the unlock key with HKDF-SHA256 (info ``meshkit
autolock v1``), the file's name as associated data (a locked datakey does not open as a secret).
The unlock key is random (32 bytes, shown as ``MKKEY-1-<base64>``), so HKDF (not a password
KDF) fits. It lives in the replicated state sealed with the data key, so any unlocked manager can
show or rotate it (`cluster unlock-key`), and it reaches no disk in clear.

A manager started with locked files waits, its local socket up, for `meshkit node unlock`
(`Gate`); until then its raft replica does not run, it says so in its log, other managers
show it as Unreachable, and the manager commands on its socket answer "locked".
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshkit.base.errors import MeshkitError
from meshkit.base.files import write_private

KEY_PREFIX = "MKKEY-1-"
FILE_PREFIX = "mklock1:"
SUFFIX = ".locked"
LOCKED_FILES = ("secret", "datakey", "../certs/node.key")
"""The files kept encrypted, relative to the raft dir: the raft secret, the data key, and the
manager's TLS key."""
_INFO = b"meshkit autolock v1"

LOCKED_TEXT = (
    "This manager is locked: its keys are encrypted and it needs the cluster's unlock key "
    "before it can be used. Run `meshkit node unlock` on it."
)


class LockError(MeshkitError):
    """A wrong or malformed unlock key, or a locked file that does not open."""


def new_unlock_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _kek(key: str) -> AESGCM:
    key = key.strip()
    if not key.startswith(KEY_PREFIX):
        raise LockError(f"invalid unlock key: it starts with {KEY_PREFIX}")
    body = key[len(KEY_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise LockError("invalid unlock key: not base64") from None
    if len(raw) != 32:
        raise LockError("invalid unlock key: wrong length")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return AESGCM(hkdf.derive(raw))


def encrypt(data: bytes, key: str, name: str) -> str:
    nonce = os.urandom(12)
    blob = nonce + _kek(key).encrypt(nonce, data, name.encode())
    return FILE_PREFIX + base64.b64encode(blob).decode("ascii")


def decrypt(text: str, key: str, name: str) -> bytes:
    if not text.startswith(FILE_PREFIX):
        raise LockError(f"{name}: not a locked file")
    try:
        blob = base64.b64decode(text[len(FILE_PREFIX) :])
        return _kek(key).decrypt(blob[:12], blob[12:], name.encode())
    except (InvalidTag, ValueError):
        raise LockError("invalid unlock key: it does not open this manager's keys") from None


def _locked(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _paths(raft_dir: Path) -> list[Path]:
    return [Path(os.path.normpath(Path(raft_dir) / n)) for n in LOCKED_FILES]


def is_locked(raft_dir: Path) -> bool:
    """Some of the manager's secret files are locked (a start must wait for the key)."""
    return any(_locked(p).exists() for p in _paths(raft_dir))


def in_clear(raft_dir: Path) -> list[str]:
    """The manager's secret files that are in clear (a renewed TLS key, force-new-cluster's new
    raft secret, a promotion: to be locked while the manager runs)."""
    return [p.name for p in _paths(raft_dir) if p.exists()]


def node_key_locked(data_dir: Path) -> bool:
    """The TLS key of the node in `data_dir` is only there locked (its agent needs the unlock
    key before it can even load its identity)."""
    key = Path(data_dir) / "certs" / "node.key"
    return _locked(key).exists() and not key.exists()


def read_file(path: Path, key: str | None) -> str:
    """A secret file's text: the clear file (when both are there it is the newer: a renewal
    wrote it and the lock loop has not locked it yet), else the locked one opened with `key`."""
    path = Path(path)
    locked = _locked(path)
    if locked.exists() and not path.exists():
        if not key:
            raise LockError(f"{path} is locked: {LOCKED_TEXT}")
        return decrypt(locked.read_text(), key, path.name).decode()
    return path.read_text().strip()


def write_file(path: Path, text: str, key: str | None) -> None:
    """Keep `text` at `path`: encrypted (``.locked``, the clear file removed) with a key, else
    in clear (the locked file removed)."""
    path = Path(path)
    locked = path.with_name(path.name + SUFFIX)
    if key:
        write_private(locked, encrypt(text.encode(), key, path.name))
        path.unlink(missing_ok=True)
    else:
        write_private(path, text)
        locked.unlink(missing_ok=True)


def relock(raft_dir: Path, old_key: str | None, new_key: str | None) -> None:
    """Re-encrypt the manager's secret files from `old_key` to `new_key` (None: clear)."""
    for path in _paths(raft_dir):
        if path.exists() or _locked(path).exists():
            text = read_file(path, old_key)
            write_file(path, text + "\n" if path.suffix == ".key" else text, new_key)


class Gate:
    """A locked manager's wait for its unlock key (one per data dir, in this process)."""

    def __init__(self, raft_dir: Path) -> None:
        self.raft_dir = Path(raft_dir)
        self.key: str | None = None
        self.waiting = False
        self.on_wait: Callable[[], None] | None = None  # `node run`: tell the user at once
        self._event = asyncio.Event()

    @property
    def locked(self) -> bool:
        """True while a start waits for the key."""
        return self.waiting and self.key is None

    def unlock(self, key: str) -> None:
        """Check `key` against the locked files (LockError if it does not open them)."""
        key = key.strip()
        for path in _paths(self.raft_dir):
            if _locked(path).exists() and not path.exists():
                decrypt(_locked(path).read_text(), key, path.name)
        self.key = key
        self._event.set()

    async def wait(self) -> str:
        self.waiting = True
        if self.on_wait is not None:
            self.on_wait()
        try:
            await self._event.wait()
        finally:
            self.waiting = False
        assert self.key is not None
        return self.key


_GATES: dict[Path, Gate] = {}
RAFT_DIR = "raft"  # as in meshkit.cluster.node.config, for the API (which cannot import it)


def gate_for(raft_dir: Path) -> Gate:
    """The gate of the manager whose raft dir this is (the API's `unlock` and the replica's
    start meet here)."""
    raft_dir = Path(raft_dir).resolve()
    gate = _GATES.get(raft_dir)
    if gate is None:
        gate = _GATES[raft_dir] = Gate(raft_dir)
    return gate


def node_gate(data_dir: Path) -> Gate:
    """`gate_for` the raft dir of the node whose data dir this is."""
    return gate_for(Path(data_dir) / RAFT_DIR)
