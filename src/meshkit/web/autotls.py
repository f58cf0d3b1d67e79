"""Automatic HTTPS as the web server sees it: where certificates from an ACME CA go, and the
answers to the CA's challenges. The ACME client itself lives in meshkit.acme (it needs the
`cryptography` package, which web/ never loads); `meshkit web` wires the two.

    hub = CertHub()                              # one per process
    ports = plan(config, hub=hub)                # HTTPS listeners of ACME sites join the hub
    issuer.start(hub, wanted(config))            # meshkit.acme.AcmeManager: obtains, renews
    hub.install(["a.example"], cert_pem, key_pem)  # from any thread: served at the next handshake

The hub holds plain data and SSL contexts, and its methods only assign dict items, so the
ACME client's executor thread calls them directly (no lock; the GIL makes each assignment
atomic, and a handshake reads one dict item):

- HTTP-01: `set_token(token, key_authorization)`; ChallengeFront answers
  `GET /.well-known/acme-challenge/TOKEN` on the http port before any site handler.
- TLS-ALPN-01 (RFC 8737): `set_alpn(name, cert_pem, key_pem)`; a ClientHello for that name
  gets a context whose only ALPN protocol is `acme-tls/1` and whose certificate is the
  challenge's (Python's SNI callback cannot see the offered ALPN list, so while a name's
  challenge is pending every handshake for it gets the challenge certificate: the manager
  prefers HTTP-01 when both are allowed, and the window lasts one validation).
- Certificates: `install(names, cert_pem, key_pem)` makes one context per listener (with
  that listener's handshake options) and swaps it in by name: a renewal takes effect at the
  next handshake, without a restart; connections already open keep their session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshkit.web.directives.tls import TLSConfig
from meshkit.web.message import Headers, Request, Response

if TYPE_CHECKING:
    from meshkit.web.caddyfile.load import Config
    from meshkit.web.message import Handler, HandlerResult
    from meshkit.web.tlsctx import TlsListener

__all__ = [
    "ACME_TLS_1",
    "CHALLENGE_PREFIX",
    "CertHub",
    "ChallengeFront",
    "Issuer",
    "Wanted",
    "wanted",
]

log = logging.getLogger("meshkit.web")

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
ACME_TLS_1 = "acme-tls/1"


@dataclass(frozen=True)
class Wanted:
    """A host name that needs a certificate from an ACME CA, and how to ask for it."""

    name: str
    email: str = ""  # `tls EMAIL`; "" : the -email flag (or no email)
    ca: str = ""  # `ca URL`; "" : the -ca flag (or the default CA)
    key_type: str = "p256"
    must_staple: bool = False  # `tls { must_staple }`: the CSR asks for OCSP Must-Staple


def wanted(config: Config) -> list[Wanted]:
    """The names of the configuration's automatic-HTTPS sites, each once (first site wins)."""
    out: dict[str, Wanted] = {}
    for site in config.sites:
        tls = site.directives.get("tls")
        if not (isinstance(tls, TLSConfig) and tls.acme and not tls.off) or tls.on_demand:
            continue  # (on-demand names are asked for at handshake time)
        for a in site.addresses:
            if a.scheme == "https" and a.host and a.host not in out:
                out[a.host] = Wanted(a.host, tls.email, tls.ca, tls.key_type, tls.must_staple)
    return list(out.values())


ON_DEMAND_WAIT = 60.0  # seconds a handshake may wait for its on-demand certificate


async def _ask(url: str, name: str) -> bool:
    """on-demand TLS's `ask`: whether GET URL?domain=NAME answers 2xx (logged when not)."""
    full = url + ("&" if "?" in url else "?") + urllib.parse.urlencode({"domain": name})

    def get() -> str:
        try:
            with urllib.request.urlopen(full, timeout=10) as r:
                return "" if 200 <= r.status < 300 else f"status {r.status}"
        except urllib.error.HTTPError as exc:
            return f"status {exc.code}"
        except (OSError, ValueError) as exc:
            return f"no answer ({exc})"

    why = await asyncio.get_running_loop().run_in_executor(None, get)
    if why:
        log.warning("on-demand TLS: no certificate for %s: %s answered %s", name, url, why)
    return not why


class Issuer(Protocol):
    """What obtains and renews certificates into a hub (meshkit.acme.AcmeManager)."""

    def start(self, hub: CertHub, names: Sequence[Wanted]) -> None:
        """Serve what is stored at once, then obtain and renew in the background."""

    def update(self, names: Sequence[Wanted]) -> None:
        """The names after a reload: new ones are obtained, gone ones are no longer renewed."""

    def add(self, name: Wanted) -> None:
        """Obtain (or load) and renew one more name, kept across update() (on-demand TLS)."""

    async def stop(self) -> None:
        """Stop the background work (an order in flight is abandoned)."""


class CertHub:
    """Current certificates by name, the pending challenges, and the HTTPS listeners that
    serve automatic-HTTPS names (held weakly: a reload's new listeners replace them)."""

    def __init__(self, *, http_challenge: bool = True, alpn_challenge: bool = True) -> None:
        self.http_challenge = http_challenge
        self.alpn_challenge = alpn_challenge
        self.tokens: dict[str, str] = {}  # HTTP-01 token -> key authorization
        self.alpn: dict[str, object] = {}  # name -> ssl.SSLContext of its TLS-ALPN-01 answer
        self.certs: dict[str, tuple[bytes, bytes]] = {}  # name -> (chain PEM, key PEM)
        # called on the loop when a certificate from the CA is installed (`on certrenew`)
        self.on_renewed: Callable[[str], None] | None = None
        # on-demand TLS: what obtains the names (meshkit.acme.AcmeManager), the handshakes
        # waiting for a name (resolved True once its certificate is installed)
        self.issuer: Issuer | None = None
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: weakref.WeakSet[TlsListener] = weakref.WeakSet()

    # --- listeners (the loop thread) ---

    def attach(self, listener: TlsListener) -> None:
        """A listener whose `auto` names the hub serves: it gets what is there already."""
        self._listeners.add(listener)
        listener.challenges = self.alpn
        for name in list(listener.auto):
            pair = self.certs.get(name)
            if pair is not None:
                listener.put(name, *pair)

    # --- from the ACME client's thread ---

    def install(self, names: Sequence[str], cert_pem: bytes, key_pem: bytes) -> None:
        """Serve this certificate for these names from the next handshake on. Raises
        ssl.SSLError (or OSError) when the pair cannot be loaded; nothing changes then."""
        for listener in list(self._listeners):
            for name in names:
                if name in listener.auto:
                    listener.put(name, cert_pem, key_pem)
        for name in names:
            self.certs[name] = (cert_pem, key_pem)
        loop = self._loop
        if loop is not None and any(n in self._pending for n in names):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._settle, list(names), True)

    # --- on-demand TLS (the loop thread) ---

    def on_demand(self, listener: TlsListener, name: str) -> asyncio.Future[bool] | None:
        """A handshake for `name` on `listener`: None to go on now, or a future to wait for
        (True once the name's certificate is served). A name an on-demand site covers gets
        a certificate obtained now, when `ask` agrees and `max_certs` allows."""
        name = name.lower().rstrip(".")
        if not name or listener.pick(name) is not None:
            return None
        pair = self.certs.get(name)
        if pair is not None and listener.on_demand_for(name) is not None:
            listener.auto.add(name)  # a listener of a reload: the certificate is here
            listener.put(name, *pair)
            return None
        cfg = listener.on_demand_for(name)
        if cfg is None or self.issuer is None:
            return None
        fut = self._pending.get(name)
        if fut is not None:
            return fut
        if cfg.max_certs and listener.on_demand_count >= cfg.max_certs:
            log.warning(
                "on-demand TLS: no certificate for %s: max_certs %d reached (%s)",
                name,
                cfg.max_certs,
                cfg.where,
            )
            return None
        listener.on_demand_count += 1
        loop = self._loop = asyncio.get_running_loop()
        fut = self._pending[name] = loop.create_future()
        task = loop.create_task(self._obtain(listener, name, cfg, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _obtain(
        self, listener: TlsListener, name: str, cfg: TLSConfig, fut: asyncio.Future[bool]
    ) -> None:
        try:
            if cfg.ask and not await _ask(cfg.ask, name):
                listener.on_demand_count -= 1
                self._settle([name], False)
                return
            log.info("on-demand TLS: obtaining a certificate for %s", name)
            listener.auto.add(name)
            assert self.issuer is not None
            self.issuer.add(Wanted(name, cfg.email, cfg.ca, cfg.key_type, cfg.must_staple))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), ON_DEMAND_WAIT)
            if not fut.done():
                log.warning(
                    "on-demand TLS: no certificate for %s within %gs; the handshakes "
                    "waiting go on without (it keeps being asked for)",
                    name,
                    ON_DEMAND_WAIT,
                )
        finally:
            self._settle([name], False)

    def _settle(self, names: list[str], ok: bool) -> None:
        for name in names:
            fut = self._pending.pop(name, None)
            if fut is not None and not fut.done():
                fut.set_result(ok)

    def renewed(self, name: str) -> None:
        """A certificate for `name` came from the CA and is served (on the loop thread)."""
        if self.on_renewed is not None:
            try:
                self.on_renewed(name)
            except Exception:  # a hook's trouble is not the certificate's
                log.exception("certrenew hooks for %s failed", name)

    def set_token(self, token: str, key_authorization: str) -> None:
        self.tokens[token] = key_authorization

    def drop_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    def set_alpn(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        from meshkit.web.tlsctx import challenge_context

        self.alpn[name] = challenge_context(cert_pem, key_pem)

    def drop_alpn(self, name: str) -> None:
        self.alpn.pop(name, None)


class ChallengeFront:
    """The http port's handler: ACME HTTP-01 answers first, then the port's router."""

    def __init__(self, inner: Handler, hub: CertHub) -> None:
        self.inner = inner
        self.hub = hub
        # the server caches validated responses only for handlers that say so
        self.validated_responses = bool(getattr(inner, "validated_responses", False))

    def __call__(self, request: Request, /) -> HandlerResult:
        path = request.path
        if path.startswith(CHALLENGE_PREFIX) and self.hub.tokens:
            answer = self.hub.tokens.get(path[len(CHALLENGE_PREFIX) :])
            if answer is not None:
                log.info("ACME: answering the HTTP-01 challenge for %s", request.host)
                headers = Headers()
                headers.set("Content-Type", "text/plain")
                return Response(status=200, headers=headers, body=answer.encode())
        return self.inner(request)
