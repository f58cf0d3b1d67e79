"""tls: how a site is served over HTTPS (Caddy v1's forms).

    tls off                         # plain HTTP, even on an https:// address's port
    tls off h2c                     # plain HTTP, and cleartext HTTP/2 with prior knowledge
    tls CERT_FILE KEY_FILE          # this certificate (PEM chain) and key
    tls self_signed                 # an in-memory certificate for the site's names, 7 days
    tls EMAIL                       # automatic HTTPS (ACME) with this account email
    tls [CERT KEY | EMAIL] {
        protocols MIN [MAX]         # tls1.2 (default min) | tls1.3; one = only that one
        ciphers NAME...             # Caddy's TLS 1.2 suite names (TLS 1.3 suites are fixed)
        curves NAME                 # one of x25519 p256 p384 p521 (Python's ssl sets one)
        key_type p256|p384|rsa2048|rsa4096   # for self_signed (default p256)
        clients [request|require|verify_if_given] CA_FILE...
        alpn PROTO...               # default h2 http/1.1 (h2 only while -http2 is on)
        load DIR                    # every certificate/key pair found in the folder
        ca URL                      # the ACME directory (automatic HTTPS)
        max_certs N                 # on-demand: obtain certificates at handshake time, at
                                    # most N (for a `*.domain` or host-less site)
        ask URL                     # on-demand: GET URL?domain=NAME must answer 2xx first
        ct off                      # accepted (v1): meshkit never staples SCTs anyway
        must_staple                 # automatic HTTPS: ask the CA for OCSP Must-Staple
    }

The certificate and key files are checked here, so that `meshkit web -validate` names a
missing file or a key that does not belong to its certificate with Caddyfile:LINE. A `tls`
that names no certificate (`tls EMAIL`, `tls { ca URL }`) asks for automatic HTTPS: the site's
certificates come from an ACME CA (meshkit.acme, wired by `meshkit web`; see
meshkit.web.autotls). On-demand TLS (`max_certs`, `ask`): a handshake for a name the site
covers but has no certificate for waits while one is obtained (meshkit.web.autotls's
CertHub.on_demand). `dns` and `wildcard` are read and refused (not available yet). Building
the SSL contexts is meshkit.web.tlsctx's job.

OCSP stapling needs no line: every served certificate that names an OCSP responder gets
its response stapled (meshkit.web.staple). `must_staple` (automatic HTTPS only) puts RFC
7633's TLS Feature extension into the CSR; such a certificate is only served with a staple.
Stapling needs meshkit's compiled extension (Python's ssl module cannot staple): without it
(MESHKIT_NO_EXTENSIONS=1) `must_staple` is refused here, with Caddyfile:LINE.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import ClassVar

from meshkit.web import staple
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site

NO_ACME = "automatic HTTPS (ACME) is not on"
NOT_YET = "is not available yet (automatic HTTPS has HTTP-01 and TLS-ALPN-01 only)"

PROTOCOLS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}
_OLD_PROTOCOLS = ("ssl3.0", "tls1.0", "tls1.1")

# Caddy v1's cipher suite names -> OpenSSL's (TLS 1.2 suites; Python cannot choose 1.3's)
CIPHERS = {
    "ECDHE-ECDSA-AES256-GCM-SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-WITH-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-WITH-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-CBC-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-CBC-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-CBC-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-CBC-SHA": "ECDHE-ECDSA-AES128-SHA",
    "RSA-AES256-CBC-SHA": "AES256-SHA",
    "RSA-AES128-CBC-SHA": "AES128-SHA",
}
_REFUSED_CIPHERS = ("ECDHE-RSA-3DES-EDE-CBC-SHA", "RSA-3DES-EDE-CBC-SHA")

CURVES = {"x25519": "X25519", "p256": "prime256v1", "p384": "secp384r1", "p521": "secp521r1"}
KEY_TYPES = ("p256", "p384", "rsa2048", "rsa4096")
CLIENT_MODES = {"request", "require", "verify_if_given"}


@dataclass
class TLSConfig:
    """A site's parsed `tls` lines. Paths are absolute."""

    keeps_static: ClassVar[bool] = True  # configuration only: no per-request work
    off: bool = False
    # `tls off h2c`: the plain port also speaks HTTP/2 to clients that start with its
    # preface (prior knowledge, RFC 9113 3.3; never the Upgrade: h2c dance), with -http2 on
    h2c: bool = False
    cert: str = ""
    key: str = ""
    self_signed: bool = False
    load: list[str] = field(default_factory=list)  # folders
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (cert, key): cert + load
    min_version: str = "tls1.2"
    max_version: str = "tls1.3"
    ciphers: list[str] = field(default_factory=list)  # OpenSSL names
    curve: str = ""  # OpenSSL name
    key_type: str = "p256"
    client_mode: str = ""  # "" (no client certificates), request, require, verify_if_given
    client_cas: list[str] = field(default_factory=list)
    # offered in this order; "h2" is dropped when `meshkit web -http2=false`
    alpn: list[str] = field(default_factory=lambda: ["h2", "http/1.1"])
    where: str = ""  # file:line of the first tls line, for messages about the port
    # automatic HTTPS: certificates from an ACME CA (meshkit.web.autotls)
    acme: bool = False
    email: str = ""  # `tls EMAIL`: the ACME account's email ("" : -email, or none)
    ca: str = ""  # `ca URL`: the ACME directory ("" : -ca, or the default CA)
    # on-demand TLS: certificates obtained at handshake time (`max_certs N`, `ask URL`)
    on_demand: bool = False
    max_certs: int = 0  # 0: no limit (only with `ask`)
    ask: str = ""
    # `must_staple`: the ACME CSR asks for RFC 7633's TLS Feature (status_request)
    must_staple: bool = False

    def options(self) -> tuple[object, ...]:
        """What must be the same for every site of one port (one handshake serves them)."""
        return (
            self.min_version,
            self.max_version,
            tuple(self.ciphers),
            self.curve,
            self.client_mode,
            tuple(self.client_cas),
            tuple(self.alpn),
        )


def _file(d: Dispenser, path: str, what: str) -> str:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise d.err(f"tls: {what} file {path!r} does not exist (or is not a file)")
    if not os.access(full, os.R_OK):
        raise d.err(f"tls: {what} file {path!r} is not readable")
    return full


def check_pair(d: Dispenser, cert: str, key: str) -> None:
    """Load the pair once: a key that is not the certificate's is an error here."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in str(reason).upper():
            raise d.err(f"tls: the key {key!r} does not match the certificate {cert!r}") from None
        raise d.err(f"tls: cannot load {cert!r} with key {key!r}: {reason}") from None


def pairs_in(d: Dispenser, folder: str) -> list[tuple[str, str]]:
    """The certificate/key pairs of a `load` folder: PEM files holding both a certificate
    and its key (Caddy v1's form), and NAME.crt beside NAME.key."""
    full = os.path.abspath(folder)
    if not os.path.isdir(full):
        raise d.err(f"tls: load folder {folder!r} does not exist (or is not a folder)")
    found: list[tuple[str, str]] = []
    for name in sorted(os.listdir(full)):
        path = os.path.join(full, name)
        if not os.path.isfile(path):
            continue
        stem, ext = os.path.splitext(name)
        if ext in (".crt", ".cert") and os.path.isfile(os.path.join(full, stem + ".key")):
            found.append((path, os.path.join(full, stem + ".key")))
        elif ext == ".pem":
            try:
                with open(path, encoding="latin-1") as f:
                    text = f.read(1 << 20)
            except OSError as exc:
                raise d.err(f"tls: cannot read {path!r}: {exc.strerror}") from None
            if "-----BEGIN CERTIFICATE-----" in text and "PRIVATE KEY-----" in text:
                found.append((path, path))
    if not found:
        raise d.err(f"tls: load folder {folder!r} holds no certificate/key pair")
    return found


def parse(d: Dispenser, site: Site) -> TLSConfig:
    cfg = TLSConfig()
    while d.next():
        if not cfg.where:
            cfg.where = d.token().where()
        args = d.remaining_args()
        if len(args) == 1 and args[0] == "off":
            cfg.off = True
        elif args == ["off", "h2c"]:
            cfg.off = cfg.h2c = True
        elif len(args) == 1 and args[0] == "self_signed":
            cfg.self_signed = True
        elif len(args) == 1 and "@" in args[0]:
            cfg.email = args[0]
        elif len(args) == 2:
            cfg.cert = _file(d, args[0], "certificate")
            cfg.key = _file(d, args[1], "key")
            check_pair(d, cfg.cert, cfg.key)
            cfg.pairs.append((cfg.cert, cfg.key))
        elif args:
            raise d.arg_err()
        for _ in d.block():
            _option(d, cfg)
    if cfg.off:
        return cfg
    if cfg.on_demand and (cfg.pairs or cfg.self_signed):
        raise d.err("tls: max_certs and ask are for automatic HTTPS (on-demand), but this tls "
                    "names its certificate")  # fmt: skip
    if not (cfg.pairs or cfg.self_signed):
        cfg.acme = True  # no certificate named: automatic HTTPS (the loader checks the rest)
    elif cfg.must_staple:
        raise d.err(
            "tls: must_staple is for automatic HTTPS (it asks the CA for the extension), but "
            "this tls names its certificate (one of your own that has the extension is only "
            "served with a staple anyway)"
        )
    elif cfg.email or cfg.ca:
        raise d.err(
            f"tls: {'an email' if cfg.email else 'ca'} is for automatic HTTPS, but this tls "
            "names its certificate"
        )
    if PROTOCOLS[cfg.min_version] > PROTOCOLS[cfg.max_version]:
        raise d.err(f"tls: protocols {cfg.min_version} {cfg.max_version}: min is above max")
    return cfg


def _option(d: Dispenser, cfg: TLSConfig) -> None:
    name = d.val()
    args = d.remaining_args()
    if name == "protocols":
        args = [a.lower() for a in args]  # v1 matches protocol names case-insensitively
        if not 1 <= len(args) <= 2:
            raise d.arg_err()
        for a in args:
            if a in _OLD_PROTOCOLS:
                raise d.err(f"tls: protocol {a} is not offered (insecure); use tls1.2 or tls1.3")
            if a not in PROTOCOLS:
                raise d.err(f"tls: unknown protocol {a!r} (expected tls1.2 or tls1.3)")
        # v1 (caddytls/setup.go): one protocol pins both ends, two give the range
        cfg.min_version = args[0]
        cfg.max_version = args[-1]
    elif name == "ciphers":
        if not args:
            raise d.arg_err()
        out = []
        for a in args:
            if a in _REFUSED_CIPHERS:
                raise d.err(f"tls: cipher {a} is not offered by this OpenSSL (3DES is insecure)")
            openssl = CIPHERS.get(a.upper())
            if openssl is None:
                raise d.err(
                    f"tls: unknown cipher {a!r} (Caddy's names, e.g. {next(iter(CIPHERS))})"
                )
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(openssl)
            except ssl.SSLError:
                raise d.err(f"tls: cipher {a} is not available in this OpenSSL") from None
            out.append(openssl)
        cfg.ciphers = out
    elif name == "curves":
        if not args:
            raise d.arg_err()
        for a in args:
            if a.lower() not in CURVES:
                raise d.err(f"tls: unknown curve {a!r} (expected x25519, p256, p384 or p521)")
        if len(args) > 1:
            raise d.err(
                "tls: curves: Python's ssl module sets one curve only; name one "
                f"(got {len(args)}: {' '.join(args)})"
            )
        cfg.curve = CURVES[args[0].lower()]
    elif name == "key_type":
        if len(args) != 1:
            raise d.arg_err()
        if args[0].lower() not in KEY_TYPES:
            raise d.err(f"tls: unknown key_type {args[0]!r} (expected {', '.join(KEY_TYPES)})")
        cfg.key_type = args[0].lower()
    elif name == "clients":
        if not args:
            raise d.arg_err()
        mode = "require"
        if args[0] in CLIENT_MODES:
            mode = args.pop(0)
        if not args:
            raise d.err("tls: clients needs at least one CA file")
        cfg.client_mode = mode
        cfg.client_cas = [_file(d, a, "client CA") for a in args]
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cfg.client_cas[0])
            for ca in cfg.client_cas[1:]:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(ca)
        except ssl.SSLError as exc:
            raise d.err(f"tls: clients: cannot load a CA file: {exc.reason or exc}") from None
    elif name == "alpn":
        if not args:
            raise d.arg_err()
        cfg.alpn = args
    elif name == "load":
        if not args:
            raise d.arg_err()
        for folder in args:
            cfg.load.append(os.path.abspath(folder))
            for cert, key in pairs_in(d, folder):
                check_pair(d, cert, key)
                cfg.pairs.append((cert, key))
    elif name == "ca":
        if len(args) != 1:
            raise d.arg_err()
        if not args[0].startswith(("https://", "http://")):
            raise d.err(f"tls: ca {args[0]!r}: expected the ACME directory's URL")
        cfg.ca = args[0]
    elif name == "max_certs":
        if len(args) != 1:
            raise d.arg_err()
        if not args[0].isdigit() or int(args[0]) < 1:
            raise d.err(f"tls: max_certs {args[0]!r} must be a whole number above 0")
        cfg.max_certs = int(args[0])
        cfg.on_demand = True
    elif name == "ask":
        if len(args) != 1:
            raise d.arg_err()
        if not args[0].startswith(("https://", "http://")):
            raise d.err(f"tls: ask {args[0]!r}: expected a URL (http:// or https://)")
        cfg.ask = args[0]
        cfg.on_demand = True
    elif name == "ct":
        # v1 stapled SCTs unless `ct off`; meshkit never staples them, so `off` is what it does
        if args != ["off"]:
            raise d.arg_err()
    elif name == "must_staple":
        if args:
            raise d.arg_err()
        if not staple.available():
            raise d.err(
                "tls: must_staple needs OCSP stapling, which is not available: "
                f"{staple.unavailable_reason()}; Python's ssl module cannot staple"
            )
        cfg.must_staple = True
    elif name in ("dns", "wildcard", "email"):
        raise d.err(f"tls: {name} {NOT_YET}")
    else:
        raise d.err(f"tls: unknown option {name!r}")


register("tls", parse, passthrough)
