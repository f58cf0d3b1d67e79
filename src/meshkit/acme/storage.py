"""Where automatic HTTPS keeps its certificates and ACME accounts.

    $MESHKIT_DATA, else $XDG_DATA_HOME/meshkit, else ~/.local/share/meshkit   (the data folder)
      acme/<CA host[:port]>/sites/<name>/<name>.crt   the chain (PEM)
                                         <name>.key   its private key (PEM)
                                         <name>.json  {"names", "ca", "not_after", "obtained"}
      acme/<CA host[:port]>/users/<email or "default">/account.key  account.json

As Caddy v1's `$CADDYPATH/acme/<ca>/sites/<host>/`, with the data folder chosen the XDG way
(it does not depend on -root or the working directory). Folders are 0700, files 0600,
written atomically (a crash never leaves half a key).

`CertStore` is what the manager (meshkit.acme.manager) needs of a store: `Storage` (this
process alone: `meshkit web`), or the cluster's replicated state for nodes with `--web`
(meshkit.cluster.node.webcerts), where one node at a time may order a name (`take_order`) and
challenge answers are published to every node (`hooks`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from meshkit.base.files import make_private_dir, write_private

if TYPE_CHECKING:
    from meshkit.acme.client import Hooks

__all__ = ["CertStore", "Storage", "data_dir"]


class CertStore(Protocol):
    """Where certificates and accounts of one CA live, and who may order a name. Called from
    worker threads (never the event loop's)."""

    def where(self, name: str) -> str:
        """Where `name`'s certificate is kept, for the log."""
        ...

    def load_site(self, name: str) -> tuple[bytes, bytes, dict[str, Any]] | None: ...
    def save_site(self, name: str, cert: bytes, key: bytes, meta: dict[str, Any]) -> None: ...
    def load_account(self, email: str) -> tuple[bytes, str] | None: ...
    def save_account(self, email: str, key: bytes, regr: str) -> None: ...

    def take_order(self, name: str) -> bool:
        """True: this process may order `name` now (until end_order); False: another one
        does (or nobody can say), its certificate will be in the store."""
        ...

    def end_order(self, name: str, retry_in: float = 0.0) -> None:
        """The order is over; `retry_in` > 0: it failed and is tried again in that many
        seconds (by this process: the others keep waiting, so that N nodes do not try N
        times as often)."""
        ...

    def hooks(self, local: Hooks) -> Hooks:
        """Where an order's challenge answers go, given this process's own (the CertHub)."""
        ...


def data_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("MESHKIT_DATA"):
        return Path(env["MESHKIT_DATA"])
    xdg = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "meshkit"


def _safe(part: str) -> str:
    part = re.sub(r"[^A-Za-z0-9._@:+-]", "_", part.lower()) or "_"
    return "_" + part if part.startswith(".") else part


class Storage:
    """The files of one CA (its directory URL) under the data folder."""

    def __init__(self, ca_url: str, root: Path | None = None) -> None:
        host = urlsplit(ca_url).netloc or ca_url
        self.base = (root or data_dir()) / "acme" / _safe(host)

    def _private(self, d: Path) -> None:
        """d and every folder from <data>/acme down to it: 0700."""
        top = self.base.parent
        make_private_dir(d)
        for parent in d.relative_to(top).parents:
            make_private_dir(top / parent)

    def site_dir(self, name: str) -> Path:
        return self.base / "sites" / _safe(name)

    def where(self, name: str) -> str:
        return str(self.site_dir(name))

    def take_order(self, name: str) -> bool:
        return True  # one process: nobody else orders

    def end_order(self, name: str, retry_in: float = 0.0) -> None:
        pass

    def hooks(self, local: Hooks) -> Hooks:
        return local

    def load_site(self, name: str) -> tuple[bytes, bytes, dict[str, Any]] | None:
        d = self.site_dir(name)
        stem = _safe(name)
        try:
            cert = (d / f"{stem}.crt").read_bytes()
            key = (d / f"{stem}.key").read_bytes()
        except OSError:
            return None
        try:
            meta = json.loads((d / f"{stem}.json").read_text())
        except (OSError, ValueError):
            meta = {}
        return cert, key, meta if isinstance(meta, dict) else {}

    def save_site(self, name: str, cert: bytes, key: bytes, meta: dict[str, Any]) -> None:
        d = self.site_dir(name)
        self._private(d)
        stem = _safe(name)
        write_private(d / f"{stem}.key", key)
        write_private(d / f"{stem}.crt", cert)
        write_private(d / f"{stem}.json", json.dumps(meta, indent=2) + "\n")

    def user_dir(self, email: str) -> Path:
        return self.base / "users" / _safe(email or "default")

    def load_account(self, email: str) -> tuple[bytes, str] | None:
        """(account key PEM, registration JSON or "")."""
        d = self.user_dir(email)
        try:
            key = (d / "account.key").read_bytes()
        except OSError:
            return None
        try:
            regr = (d / "account.json").read_text()
        except OSError:
            regr = ""
        return key, regr

    def save_account(self, email: str, key: bytes, regr: str) -> None:
        d = self.user_dir(email)
        self._private(d)
        write_private(d / "account.key", key)
        write_private(d / "account.json", regr)
