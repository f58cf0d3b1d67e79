"""OCSP stapling as the web server sees it: which contexts serve which certificate, and the
C callback that puts a response into their handshakes.

    staple.use(factory)                # `meshkit web`: meshkit.acme.stapler fetches them
    staple.watch(ctx, chain_pem, where)   # meshkit.web.tlsctx, for each certificate it loads
    staple.put(ctx, der, next_update, must)   # the stapler, when a response is (re)fetched

Fetching, verifying and refreshing the responses needs the `cryptography` package, which the
web layer never loads (docs/ARCHITECTURE.md): `meshkit web` hands this module a factory
(`use`) that builds meshkit.acme.stapler's OcspStapler at the first certificate. Without
one (an embedding that never calls `use`), certificates are served without staples.

Python's ssl module cannot staple: the response goes into the handshake through
SSL_CTX_set_tlsext_status_cb, installed by the compiled extension (meshkit._fastpath's
ocsp_staple, csrc/tls_ocsp.c) on the SSL_CTX behind the ssl.SSLContext. There is no
pure-Python twin: with MESHKIT_NO_EXTENSIONS=1 (or an extension built against another
OpenSSL than the interpreter's) `available()` is False, nothing is stapled, and the `tls`
directive refuses `must_staple` at load.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from meshkit._ext import load_fastpath

__all__ = [
    "Stapler",
    "available",
    "counts",
    "put",
    "unavailable_reason",
    "use",
    "watch",
    "watch_file",
]

log = logging.getLogger("meshkit.web")

_FAST = load_fastpath()


def unavailable_reason() -> str:
    """Why stapling is off in this process ("" when it is on)."""
    if _FAST is None:
        return "meshkit's compiled extension is not loaded (MESHKIT_NO_EXTENSIONS=1, or not built)"
    if not hasattr(_FAST, "ocsp_staple"):
        return "meshkit's compiled extension is older than OCSP stapling (rebuild it)"
    if not _FAST.tls_same_openssl():
        return "meshkit's compiled extension uses another OpenSSL than Python's ssl module"
    return ""


_REASON = unavailable_reason()


def available() -> bool:
    """Whether this process can staple OCSP responses into its handshakes."""
    return not _REASON


class Stapler(Protocol):
    """What keeps the responses of the served certificates (meshkit.acme.stapler)."""

    def watch(self, ctx: ssl.SSLContext, chain_pem: bytes, where: str) -> None:
        """`ctx` serves the certificate chain `chain_pem` (leaf first): staple its
        responses on it from now on (any thread; never blocks on the network)."""

    def ready(self, chain_pem: bytes, where: str) -> bool:
        """Blocking (a worker thread): a must-staple certificate gets a current response
        before it is served; False when none could be had."""


_factory: Callable[[], Stapler] | None = None
_stapler: Stapler | None = None
_revoked: list[Callable[[list[str]], None]] = []


def use(factory: Callable[[], Stapler] | None) -> None:
    """Where staples come from: `factory` builds the stapler once, at the first certificate
    watched (None: no stapling, the stapler made so far is dropped)."""
    global _factory, _stapler
    _factory = factory
    _stapler = None


def watch(ctx: ssl.SSLContext, chain_pem: bytes, where: str) -> None:
    """meshkit.web.tlsctx's hook: `ctx` was loaded with `chain_pem` (`where`: the Caddyfile
    line or the certificate's source, for the log)."""
    global _stapler
    if _REASON or _factory is None:
        return
    try:
        if _stapler is None:
            _stapler = _factory()
        _stapler.watch(ctx, chain_pem, where)
    except Exception:  # stapling never keeps a certificate from being served
        log.exception("OCSP: cannot staple the certificate of %s", where)


def watch_file(ctx: ssl.SSLContext, path: str, where: str) -> None:
    """watch() for a certificate loaded from the PEM file `path` (`tls CERT KEY`, `load`)."""
    if _REASON or _factory is None:
        return
    try:
        with open(path, "rb") as f:
            chain_pem = f.read()
    except OSError as exc:  # it was just loaded: gone meanwhile, served without a staple
        log.warning("OCSP: cannot read %s again for stapling: %s", path, exc.strerror)
        return
    watch(ctx, chain_pem, where)


def ready(chain_pem: bytes, where: str) -> bool:
    """Blocking, from a worker thread: a must-staple certificate about to be served gets a
    current response first (see meshkit.acme.stapler.OcspStapler.ready). True when it has
    one or needs none (also when this process does not staple)."""
    global _stapler
    if _REASON or _factory is None:
        return True
    try:
        if _stapler is None:
            _stapler = _factory()
        return _stapler.ready(chain_pem, where)
    except Exception:  # stapling never keeps a certificate from being served
        log.exception("OCSP: cannot get a response for the certificate of %s", where)
        return False


def put(ctx: ssl.SSLContext, der: bytes, next_update: float, must: bool) -> None:
    """Staple `der` on `ctx` until `next_update` (unix time); b"" drops it. `must`: a client
    that asks for the status gets an alert while there is no usable response."""
    if _FAST is None or _REASON:
        raise RuntimeError(f"OCSP stapling is not available: {_REASON}")
    _FAST.ocsp_staple(ctx, der, next_update, must)


def counts(ctx: ssl.SSLContext) -> tuple[int, int, int]:
    """(stapled, none, refused) handshakes on `ctx` (see meshkit._fastpath.ocsp_counts)."""
    if _FAST is None or _REASON:
        return (0, 0, 0)
    stapled, none, refused = _FAST.ocsp_counts(ctx)
    return int(stapled), int(none), int(refused)


def on_revoked(callback: Callable[[list[str]], None]) -> None:
    """Call `callback(names)` when a served certificate's responder says it is revoked
    (meshkit.acme.manager: a certificate it manages is renewed at once)."""
    if callback not in _revoked:
        _revoked.append(callback)


def revoked(names: list[str]) -> None:
    """The stapler found a certificate for `names` revoked: tell who manages them."""
    for cb in list(_revoked):
        try:
            cb(names)
        except Exception:  # one listener's trouble is not the others'
            log.exception("OCSP: handling the revocation of %s failed", ", ".join(names))
