"""Where a cluster keeps its replicated log when it is not the embedded raft: `--store URL`.

    etcd://HOST:PORT[,HOST2:PORT2...]     etcd's client URLs, plain HTTP
    etcds://HOST:PORT[,...]               the same over TLS (verified with --store-cacert, or
                                          the system roots; --store-cert/--store-key for a
                                          client certificate when etcd asks for one)

The spec is kept in node.json (`NodeConfig.store`) as the dict of `to_dict()`.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshkit.base.errors import MeshkitError

SCHEMES = {"etcd": False, "etcds": True}


class StoreSpecError(MeshkitError):
    pass


# A manager's etcd lease: below 2 s an ordinary GC pause or a busy host would hand the
# leader duties around; above a minute a dead leader's duties wait too long to move.
LEASE_MIN, LEASE_MAX = 2, 60


@dataclass(frozen=True)
class StoreSpec:
    url: str
    endpoints: list[tuple[str, int]] = field(default_factory=list)
    tls: bool = False
    cacert: str = ""
    cert: str = ""
    key: str = ""
    lease_ttl: int = 0  # seconds; 0: the default (EtcdTimings.lease_ttl)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["endpoints"] = [f"{h}:{p}" for h, p in self.endpoints]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreSpec:
        return parse_store(
            str(data.get("url", "")),
            cacert=str(data.get("cacert") or ""),
            cert=str(data.get("cert") or ""),
            key=str(data.get("key") or ""),
            lease_ttl=int(data.get("lease_ttl") or 0),
            check_files=False,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.cacert or None)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise StoreSpecError(f"cannot load the TLS files for etcd {self.url}: {exc}") from None
        return ctx


def _endpoint(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise StoreSpecError(f"{url}: {text!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise StoreSpecError(f"{url}: {port!r} in {text!r} is not a port number") from None
    if not 0 < number < 65536:
        raise StoreSpecError(f"{url}: port {number} is out of range")
    if not host.replace("-", "").replace(".", "").isalnum():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise StoreSpecError(f"{url}: {host!r} is not a host name or IP address") from None
    return host, number


def parse_store(
    url: str,
    *,
    cacert: str = "",
    cert: str = "",
    key: str = "",
    lease_ttl: int = 0,
    check_files: bool = True,
) -> StoreSpec:
    """`etcd://h:p,h2:p2` (or `etcds://`) and the TLS files; StoreSpecError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise StoreSpecError(
            f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...] or etcds://... (TLS)"
        )
    rest = rest.rstrip("/")
    if not rest:
        raise StoreSpecError(f"{url!r}: no etcd endpoint given")
    endpoints = [_endpoint(part.strip(), url) for part in rest.split(",") if part.strip()]
    tls = SCHEMES[scheme] or bool(cacert or cert)
    if (cert and not key) or (key and not cert):
        raise StoreSpecError("--store-cert and --store-key go together")
    if check_files:
        for flag, path in (
            ("--store-cacert", cacert),
            ("--store-cert", cert),
            ("--store-key", key),
        ):
            if path and not Path(path).is_file():
                raise StoreSpecError(f"{flag} {path}: no such file")
    spec = StoreSpec(
        url=url,
        endpoints=endpoints,
        tls=tls,
        cacert=str(Path(cacert).resolve()) if cacert else "",
        cert=str(Path(cert).resolve()) if cert else "",
        key=str(Path(key).resolve()) if key else "",
        lease_ttl=lease_ttl,
    )
    if lease_ttl and not LEASE_MIN <= lease_ttl <= LEASE_MAX:
        raise StoreSpecError(f"lease of {lease_ttl}s: expected {LEASE_MIN}s to {LEASE_MAX}s")
    if check_files:
        spec.ssl_context()
    return spec
