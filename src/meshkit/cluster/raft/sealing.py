"""Secrets in the replicated state, sealed with the cluster data key.

The raft journal and snapshots are the replicated state on disk; they held the CA private
key and the join and raft secrets in clear. Those fields (`SEALED_FIELDS`) are now stored
sealed: ``sealed1:`` + a Fernet token (AES-128-CBC + HMAC-SHA256) under the cluster data key.
The key is made by `node init` and lives only in ``raft/datakey`` (0600) on each manager; a
node that joins as (or is promoted to) a manager gets it in the join (renew) reply, over the
TLS channel that already carries the raft secret. Workers never have it, and a demoted
manager's raft dir, key included, is removed.

A value without the prefix is taken as it is: the state of a cluster made before sealing
keeps working, and tests may build states with plain values.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from meshkit.base.errors import MeshkitError
from meshkit.base.files import write_private

SEALED_FIELDS = ("ca_key_pem", "worker_secret", "manager_secret", "raft_secret")
"""ClusterState fields stored sealed."""

PREFIX = "sealed1:"
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
