"""The SSL contexts of an HTTPS port: one per certificate, chosen by SNI.

    listener = build_listener([(site_names, tls_config), ...])   # the sites of one port
    server = HttpServer(router, tls=listener.context)

Every site of a port has agreed on the handshake's options (the caddyfile loader checks it),
so the contexts differ only in their certificate. The first certificate of the first site is
the port's default: a ClientHello without SNI, or with a name no certificate covers, gets it
(never an error, and never another site's content: the Host header still picks the site,
and a host no site of the port has gets 404). Names map exactly first, then with the
leftmost label as `*` (`*.example.com`).

`tls self_signed` certificates are made with the `openssl` command (meshkit's web layer
does not load the `cryptography` package, see docs/ARCHITECTURE.md), valid 7 days, for the
site's names, and kept for the life of the process (a reload reuses them).

Automatic HTTPS (meshkit.web.autotls): the names of a port's ACME sites are the listener's
`auto` set; their contexts arrive later through `put` (the CertHub swaps them in by name,
also from the ACME client's thread). Until one arrives, a handshake for such a name gets the
port's default context; on a port with ACME sites only, that one has no certificate, and
the client gets a TLS alert (never another site's certificate). A pending TLS-ALPN-01
challenge (`challenges`) answers before any certificate.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshkit.base.errors import MeshkitError
from meshkit.web import staple
from meshkit.web.directives.tls import PROTOCOLS, TLSConfig
from meshkit.web.tlssock import attach_listener

__all__ = ["TlsListener", "build_listener", "challenge_context", "self_signed_pair"]

_KEY_ARGS = {
    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"],
    "rsa2048": ["-newkey", "rsa:2048"],
    "rsa4096": ["-newkey", "rsa:4096"],
}
_SELF_SIGNED: dict[tuple[tuple[str, ...], str], tuple[bytes, bytes]] = {}


@dataclass
class TlsListener:
    """The contexts of one port: `context` is the default one, whose SNI callback switches
    to the context of the name the client asked for."""

    context: ssl.SSLContext
    by_name: dict[str, ssl.SSLContext] = field(default_factory=dict)
    # automatic HTTPS: the names whose certificates come from the CertHub, the handshake
    # options of their contexts, and the hub's pending TLS-ALPN-01 answers (name -> context)
    auto: set[str] = field(default_factory=set)
    auto_cfg: TLSConfig | None = None
    challenges: dict[str, object] = field(default_factory=dict)
    http2: bool = True  # offer h2 by ALPN (`-http2`)
    # on-demand TLS: (host pattern of the site: "" any, "*.domain", a name; its tls config)
    on_demand: list[tuple[str, TLSConfig]] = field(default_factory=list)
    on_demand_count: int = 0  # names taken on (counted against each config's max_certs)

    def on_demand_for(self, name: str) -> TLSConfig | None:
        """The on-demand config that covers `name` (lower-case, no trailing dot), if any."""
        for pattern, cfg in self.on_demand:
            if not pattern or pattern == name:
                return cfg
            if pattern.startswith("*."):
                label, dot, rest = name.partition(".")
                if dot and label and rest == pattern[2:]:
                    return cfg
        return None

    def __hash__(self) -> int:  # held in a WeakSet by the hub
        return id(self)

    def put(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve this pair for `name` from the next handshake on (any thread)."""
        ctx = _context(self.auto_cfg or TLSConfig(), self.http2)
        _load(ctx, cert_pem, key_pem)
        staple.watch(ctx, cert_pem, f"automatic HTTPS for {name}")  # OCSP (web/staple.py)
        self.by_name[name] = ctx

    def pick(self, name: str | None) -> ssl.SSLContext | None:
        if not name:
            return None
        name = name.lower().rstrip(".")
        if self.challenges:
            answer = self.challenges.get(name)
            if isinstance(answer, ssl.SSLContext):
                return answer
        ctx = self.by_name.get(name)
        if ctx is None:
            _, dot, rest = name.partition(".")
            if dot:
                ctx = self.by_name.get("*." + rest)
        return ctx


def self_signed_pair(names: Iterable[str], key_type: str = "p256") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed certificate for `names` (made once per
    process for the same names and key type)."""
    sans = sorted({n for n in names if n and "*" not in n} or {"localhost"})
    key = (tuple(sans), key_type)
    found = _SELF_SIGNED.get(key)
    if found is not None:
        return found
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MeshkitError("tls self_signed needs the `openssl` command, which is not installed")
    alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in sans)
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as tmp:
        cert, keyfile = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        argv = [
            openssl, "req", "-x509", "-nodes", "-days", "7",
            *_KEY_ARGS[key_type],
            "-keyout", keyfile, "-out", cert,
            "-subj", f"/O=meshkit self-signed/CN={sans[0]}",
            "-addext", f"subjectAltName={alt}",
        ]  # fmt: skip
        try:
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise MeshkitError(
                f"tls self_signed: openssl failed: {exc} {detail.decode(errors='replace')}".strip()
            ) from None
        with open(cert, "rb") as f:
            cert_pem = f.read()
        with open(keyfile, "rb") as f:
            key_pem = f.read()
    _SELF_SIGNED[key] = (cert_pem, key_pem)
    return cert_pem, key_pem


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def challenge_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """The context of a TLS-ALPN-01 answer (RFC 8737): its certificate, `acme-tls/1` only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["acme-tls/1"])
    _load(ctx, cert_pem, key_pem)
    return ctx


def _context(cfg: TLSConfig, http2: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = PROTOCOLS[cfg.min_version]
    ctx.maximum_version = PROTOCOLS[cfg.max_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if cfg.ciphers:
        ctx.set_ciphers(":".join(cfg.ciphers))
    if cfg.curve:
        ctx.set_ecdh_curve(cfg.curve)
    ctx.set_alpn_protocols(cfg.alpn if http2 else [p for p in cfg.alpn if p != "h2"])
    if cfg.client_mode:
        # Python's ssl verifies a client certificate whenever it asks for one: `request`
        # and `verify_if_given` both verify a certificate that is given
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_mode == "require" else ssl.CERT_OPTIONAL
        for ca in cfg.client_cas:
            ctx.load_verify_locations(ca)
    return ctx


def _names_of(cert_path: str) -> list[str]:
    """The DNS names (and CN) a PEM certificate covers."""
    try:
        info = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, AttributeError):
        return []
    names = [v.lower() for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    if not names:
        for rdn in info.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(v.lower())
    return names


def _load(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert, "wb") as f:
            f.write(cert_pem)
        ctx.load_cert_chain(cert, key)


class CertSource(Protocol):
    """What a port needs of meshkit.web.autotls's CertHub: to be told about the listener
    whose automatic-HTTPS names it fills (a Protocol, so that this module stays below it)."""

    def attach(self, listener: TlsListener) -> None: ...


def build_listener(
    sites: list[tuple[list[str], TLSConfig]],
    hub: CertSource | None = None,
    *,
    http2: bool = True,
) -> TlsListener:
    """The contexts of one HTTPS port from its sites (their host names and `tls` configs),
    in order. Raises MeshkitError when a certificate cannot be loaded. ACME sites' names
    are left to `hub` (meshkit.web.autotls), which must be given when there are any.
    `http2`: offer h2 by ALPN where a site's `alpn` lists it (the default does)."""
    contexts: list[ssl.SSLContext] = []
    by_name: dict[str, ssl.SSLContext] = {}
    auto: set[str] = set()
    auto_cfg: TLSConfig | None = None
    on_demand: list[tuple[str, TLSConfig]] = []
    for hosts, cfg in sites:
        if cfg.acme and cfg.on_demand:
            on_demand += [(h.lower(), cfg) for h in hosts]
            auto_cfg = auto_cfg or cfg
            continue
        if cfg.acme:
            auto.update(h.lower() for h in hosts)
            auto_cfg = auto_cfg or cfg
            continue
        try:
            mine: list[tuple[ssl.SSLContext, list[str]]] = []
            for cert, key in cfg.pairs:
                ctx = _context(cfg, http2)
                ctx.load_cert_chain(cert, key)
                staple.watch_file(ctx, cert, f"{cfg.where}, {cert}")  # OCSP (web/staple.py)
                own = _names_of(cert)
                # `tls CERT KEY` serves the site's names whatever the certificate says
                names = own if (cert, key) != (cfg.cert, cfg.key) else [*hosts, *own]
                mine.append((ctx, names))
            if cfg.self_signed:
                ctx = _context(cfg, http2)
                _load(ctx, *self_signed_pair(hosts, cfg.key_type))
                mine.append((ctx, list(hosts)))
        except (ssl.SSLError, OSError) as exc:
            raise MeshkitError(f"tls ({cfg.where}): cannot load a certificate: {exc}") from None
        for ctx, names in mine:
            contexts.append(ctx)
            for n in names:
                by_name.setdefault(n.lower().rstrip("."), ctx)
    if (auto or on_demand) and hub is None:
        raise MeshkitError("automatic HTTPS sites but no ACME client to get their certificates")
    if not contexts:
        if auto_cfg is None:
            raise MeshkitError("an HTTPS port without a certificate")
        contexts.append(_context(auto_cfg, http2))  # no certificate: a TLS alert until one comes
    listener = TlsListener(contexts[0], by_name, auto, auto_cfg, http2=http2)
    listener.on_demand = on_demand

    def on_sni(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        ctx = listener.pick(name)
        if ctx is not None and ctx is not obj.context:
            obj.context = ctx
        return None

    attach_listener(contexts[0], listener, on_sni)
    if hub is not None and (auto or on_demand):
        hub.attach(listener)
    return listener
