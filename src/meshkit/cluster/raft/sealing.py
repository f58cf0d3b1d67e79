"""Secrets in the replicated state, sealed with the cluster data key.

The raft journal and snapshots are the replicated state on disk; they held the CA private
key and the join and raft secrets in clear. Those fields (`SEALED_FIELDS`) are now stored
sealed: ``sealed1:`` + a Fernet token (AES-128-CBC + HMAC-SHA256) under the cluster data key.
The key is made by `node init` and lives only in ``raft/datakey`` (0600) on each manager; a
node that joins as (or is promoted to) a manager gets it in the join (renew) reply, over the
TLS channel that already carries the raft secret. Workers never have it, and a demoted
manager's raft dir, key included, is removed.

Secret values (`meshkit secret create`) are sealed with AES-256-GCM (`cryptography`'s AESGCM):
``aesgcm1:`` + base64(12-byte random nonce + ciphertext + tag), under a key derived from the
data key with HKDF-SHA256 (info ``meshkit secrets v1``), the secret's id as associated data
(a sealed value copied onto another record does not open). `Sealer.seal_bytes` /
`Sealer.open_bytes`.

A value without the prefix is taken as it is: the state of a cluster made before sealing
keeps working, and tests may build states with plain values.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshkit.base.errors import MeshkitError
from meshkit.base.files import write_private

SEALED_FIELDS = ("ca_key_pem", "worker_secret", "manager_secret", "raft_secret", "unlock_key")
"""ClusterState fields stored sealed."""

PREFIX = "sealed1:"
GCM_PREFIX = "aesgcm1:"
_GCM_INFO = b"meshkit secrets v1"
DATA_KEY_FILE = "datakey"
"""The cluster data key's file name, in a manager's raft directory."""


class SealError(MeshkitError):
    """A sealed value that cannot be opened (no key, or another cluster's key)."""


def new_data_key() -> str:
    """A fresh cluster data key (urlsafe base64 text)."""
    return Fernet.generate_key().decode("ascii")


def load_data_key(path: Path) -> str:
    """The key in ``path``, or "" when there is none."""
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        return ""


def save_data_key(path: Path, key: str) -> None:
    """Write the key as a 0600 file (its directory is the 0700 raft dir)."""
    Fernet(key.encode("ascii"))  # refuse a malformed key before it is kept
    write_private(Path(path), key)


class Sealer:
    """Seals and opens state values with one data key ("" = no key: only plain values)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._fernet = Fernet(key.encode("ascii")) if key else None

    def seal(self, value: str) -> str:
        if self._fernet is None:
            raise SealError("this node has no cluster data key (it is not a manager)")
        return PREFIX + self._fernet.encrypt(value.encode()).decode("ascii")

    def _aead(self) -> AESGCM:
        if not self.key:
            raise SealError("this node has no cluster data key (it is not a manager)")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_GCM_INFO)
        return AESGCM(hkdf.derive(self.key.encode("ascii")))

    def seal_bytes(self, data: bytes, aad: str) -> str:
        """A secret's value, sealed with AES-256-GCM (see the module docstring)."""
        nonce = os.urandom(12)
        blob = nonce + self._aead().encrypt(nonce, data, aad.encode())
        return GCM_PREFIX + base64.b64encode(blob).decode("ascii")

    def open_bytes(self, value: str, aad: str) -> bytes:
        if not value.startswith(GCM_PREFIX):
            raise SealError("a secret in the cluster state is not sealed")
        try:
            blob = base64.b64decode(value[len(GCM_PREFIX) :])
            return self._aead().decrypt(blob[:12], blob[12:], aad.encode())
        except (InvalidTag, ValueError):
            raise SealError(
                "a secret in the cluster state does not open with this manager's data key"
            ) from None

    def open(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise SealError(
                "this manager has no cluster data key (raft/datakey): it cannot read the "
                "cluster's secrets"
            )
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SealError(
                "a secret in the cluster state does not open with this manager's data key"
            ) from None

    def seal_fields(self, cluster: dict[str, object]) -> None:
        """Seal the `SEALED_FIELDS` of a state dict in place (those that are set)."""
        for name in SEALED_FIELDS:
            value = cluster.get(name)
            if isinstance(value, str) and value and not value.startswith(PREFIX):
                cluster[name] = self.seal(value)
