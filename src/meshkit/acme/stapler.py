"""OcspStapler: OCSP responses for every served certificate that names a responder, as
Caddy v1 keeps them (meshkit.web.staple's Stapler; `meshkit web` hands it to the web layer).

For each certificate (keyed by its SHA-256), one task on the event loop:

1. a response stored on disk (`<data>/ocsp/<name>-<hash>`, Caddy v1's `ocsp/` folder of its
   storage; 0600) that still verifies and is current is stapled at once;
2. otherwise, and then halfway through each response's validity (thisUpdate + half the way
   to nextUpdate, Caddy v1's freshOCSP), the responder of the certificate's AIA is asked in
   a worker thread (meshkit.acme.ocsp: request, POST, signature, serial, times, status);
   the verified response replaces the stapled one in memory (the SSL contexts serving the
   certificate) and on disk;
3. a failure (the responder down, a bad answer) is logged and retried with backoff (1 minute
   doubling to 1 hour, MESHKIT_OCSP_RETRY for tests); the response stapled so far is served
   until its nextUpdate (the C callback never staples it later), then the certificate is
   served without a staple - or, for a must-staple certificate, not at all to a client that
   asks for the status (an alert; RFC 7633);
4. a `revoked` answer is logged as an error and stapled (clients learn the truth), and the
   certificate's names are reported to meshkit.web.staple.revoked: AcmeManager renews
   what it manages at once (Caddy v1 does the same).

The tasks run on an event loop of the stapler's own, in a daemon thread: the server's loop
never waits for it, and the certificate may come from any thread.

The task ends when no SSL context serves the certificate any more (a renewal or a reload
replaced it; contexts are held weakly) or the certificate has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from meshkit.acme.ocsp import Answer, OcspError, chain_of, fetch, must_staple, request_der, verify
from meshkit.acme.ocsp import responders as responders_of
from meshkit.acme.storage import _safe, data_dir
from meshkit.acme.threads import in_daemon_thread
from meshkit.base.durations import parse_duration
from meshkit.base.files import make_private_dir, write_private
from meshkit.web import staple

__all__ = ["OcspStapler"]

log = logging.getLogger("meshkit.web")

RETRY_FIRST = 60.0
RETRY_MAX = 3600.0
CHECK_EVERY = 3600.0  # Caddy v1's OCSPInterval: the longest sleep between looks
FETCH_TIMEOUT = 10.0


@dataclass(eq=False)
class _Cert:
    """One certificate whose responses are kept, and the contexts that serve it."""

    leaf: x509.Certificate
    issuer: x509.Certificate
    urls: list[str]
    names: list[str]
    must: bool
    where: str
    file: Path
    contexts: weakref.WeakSet[ssl.SSLContext] = field(default_factory=weakref.WeakSet)
    answer: Answer | None = None
    started: bool = False
    task: asyncio.Task[None] | None = None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject if a.oid == x509.NameOID.COMMON_NAME]
    return names or ["(no name)"]


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def sweep(folder: Path, now: float | None = None) -> list[str]:
    """Delete the stored responses of `folder` whose nextUpdate has passed or that are not
    successful OCSP responses; the names deleted."""
    now = time.time() if now is None else now
    gone: list[str] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return gone  # nothing stored yet
    for name in names:
        path = folder / name
        if name.endswith(".tmp") or not path.is_file():
            continue  # (a write in progress)
        try:
            resp = ocsp.load_der_ocsp_response(path.read_bytes())
            ok = resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            end = resp.next_update_utc if ok else None
        except (OSError, ValueError):
            end = None
        if end is None or end.timestamp() <= now:
            with contextlib.suppress(OSError):
                path.unlink()
                gone.append(name)
    if gone:
        log.info("OCSP: deleted %d expired or unreadable stored responses in %s", len(gone), folder)
    return gone


class OcspStapler:
    def __init__(self, root: Path | None = None) -> None:
        self.dir = (root or data_dir()) / "ocsp"
        value = os.environ.get("MESHKIT_OCSP_RETRY")
        self.retry_first = parse_duration(value, "MESHKIT_OCSP_RETRY") if value else RETRY_FIRST
        self.certs: dict[bytes, _Cert] = {}
        self._lock = threading.Lock()  # watch() runs on the server's loop and ACME threads
        # the responses are kept by a loop of their own, in a daemon thread: the stapler
        # is made wherever the first certificate is loaded (the server's loop, or the ACME
        # client's thread) and never holds the server's loop; staple.put is thread-safe
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="meshkit-ocsp", daemon=True).start()
        self.loop.call_soon_threadsafe(self._start_sweeper)

    def _start_sweeper(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep_every(CHECK_EVERY), name="ocsp sweep")

    async def _sweep_every(self, seconds: float) -> None:
        """Caddy v1's DeleteOldStapleFiles: stored responses that expired or cannot be read
        are deleted, at start and then every hour."""
        while True:
            await self.loop.run_in_executor(None, sweep, self.dir)
            await asyncio.sleep(seconds)

    # --- meshkit.web.staple.Stapler (any thread) ---

    def watch(self, ctx: ssl.SSLContext, chain_pem: bytes, where: str) -> None:
        try:
            leaf, issuer = chain_of(chain_pem)
        except ValueError as exc:
            log.warning("OCSP: cannot read the certificate of %s: %s", where, exc)
            return
        must = must_staple(leaf)
        urls = responders_of(leaf)
        if not urls or issuer is None:
            if must:
                log.error(
                    "OCSP: the certificate for %s (%s) is must-staple but %s: clients that "
                    "ask for its status are refused",
                    ", ".join(_names(leaf)),
                    where,
                    "names no OCSP responder" if not urls else "comes without its issuer",
                )
                staple.put(ctx, b"", 0.0, True)
            return
        digest, cert = self._entry(leaf, issuer, urls, where)
        with self._lock:
            cert.contexts.add(ctx)
            answer = cert.answer
            start = not cert.started
            cert.started = True
        if answer is not None:
            staple.put(ctx, answer.der, answer.next_update, cert.must)
        elif must:
            staple.put(ctx, b"", 0.0, True)  # refused to status askers until a response comes
        if start:
            self._start(digest, cert)

    def _entry(
        self, leaf: x509.Certificate, issuer: x509.Certificate, urls: list[str], where: str
    ) -> tuple[bytes, _Cert]:
        digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
        with self._lock:
            cert = self.certs.get(digest)
            if cert is None:
                names = _names(leaf)
                stem = f"{_safe(names[0])}-{digest[:8].hex()}"
                must = must_staple(leaf)
                cert = _Cert(leaf, issuer, urls, names, must, where, self.dir / stem)
                self.certs[digest] = cert
        return digest, cert

    def ready(self, chain_pem: bytes, where: str) -> bool:
        """Blocking (a worker thread): make sure a must-staple certificate that is about to
        be served has a current response in memory (stored, or asked for now), so that it
        is stapled from its first handshake on. True when it has one, or needs none."""
        leaf, issuer = chain_of(chain_pem)
        urls = responders_of(leaf)
        if not must_staple(leaf) or not urls or issuer is None:
            return True
        _, cert = self._entry(leaf, issuer, urls, where)
        current = cert.answer
        if current is not None and current.next_update > time.time():
            return True
        answer = self._load(cert)
        if answer is None:
            try:
                answer = self._fetch(cert)
            except OcspError as exc:
                log.warning("OCSP: no response yet for %s (%s): %s", cert.names[0], where, exc)
                return False
            self._save(cert, answer)
        cert.answer = answer
        return True

    def close(self) -> None:
        """Stop the stapler's loop (its tasks end with it; tests)."""
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _start(self, digest: bytes, cert: _Cert) -> None:
        def begin() -> None:
            cert.task = self.loop.create_task(self._keep(digest, cert), name="ocsp")

        self.loop.call_soon_threadsafe(begin)

    # --- the task of one certificate (the loop) ---

    def _apply(self, cert: _Cert, answer: Answer) -> None:
        cert.answer = answer
        for ctx in list(cert.contexts):
            staple.put(ctx, answer.der, answer.next_update, cert.must)

    async def _keep(self, digest: bytes, cert: _Cert) -> None:
        try:
            await self._keep_inner(cert)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: say so; the other certificates go on
            log.exception("OCSP: keeping the staple of %s failed", ", ".join(cert.names))
        finally:
            with self._lock:
                if self.certs.get(digest) is cert:
                    del self.certs[digest]

    async def _keep_inner(self, cert: _Cert) -> None:
        loop = asyncio.get_running_loop()
        names = ", ".join(cert.names)
        stored = await loop.run_in_executor(None, self._load, cert)
        if stored is not None:
            self._apply(cert, stored)
            log.info(
                "OCSP: stapling the stored %s response for %s (next update %s, %s)",
                stored.status,
                names,
                _when(stored.next_update),
                cert.file,
            )
        delay = self.retry_first
        expires = cert.leaf.not_valid_after_utc.timestamp()
        while len(cert.contexts) and time.time() < expires:
            now = time.time()
            current = cert.answer
            if current is not None and now < current.refresh_at():
                await asyncio.sleep(max(1.0, min(CHECK_EVERY, current.refresh_at() - now)))
                continue
            try:
                answer = await in_daemon_thread(self._fetch, cert)
            except OcspError as exc:
                if current is not None and current.next_update > time.time():
                    meanwhile = f"the current staple is served until {_when(current.next_update)}"
                elif cert.must:
                    meanwhile = "must-staple: clients asking for its status are refused meanwhile"
                else:
                    meanwhile = "served without a staple meanwhile"
                log.warning(
                    "OCSP: no response for %s (%s): %s; retrying in %gs (%s)",
                    names,
                    cert.where,
                    exc,
                    delay,
                    meanwhile,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = self.retry_first
            self._apply(cert, answer)
            await loop.run_in_executor(None, self._save, cert, answer)
            if answer.status == "revoked":
                log.error(
                    "OCSP: the certificate for %s (%s) is REVOKED (at %s%s) according to %s; "
                    "its revoked status is stapled, clients will refuse it",
                    names,
                    cert.where,
                    _when(answer.revoked_at) if answer.revoked_at else "an unknown time",
                    f", reason {answer.reason}" if answer.reason else "",
                    cert.urls[0],
                )
                staple.revoked(list(cert.names))
            else:
                log.info(
                    "OCSP: stapling a %s response for %s (this update %s, next update %s)",
                    answer.status,
                    names,
                    _when(answer.this_update),
                    _when(answer.next_update),
                )

    def _fetch(self, cert: _Cert) -> Answer:
        """Ask the responders in turn (a worker thread); the first verified answer."""
        errors = []
        request = request_der(cert.leaf, cert.issuer)
        for url in cert.urls:
            try:
                return verify(fetch(url, request, FETCH_TIMEOUT), cert.leaf, cert.issuer)
            except OcspError as exc:
                errors.append(str(exc) if len(cert.urls) == 1 else f"{url}: {exc}")
        raise OcspError("; ".join(errors))

    def _load(self, cert: _Cert) -> Answer | None:
        """The stored response, when it still verifies and is current (a worker thread)."""
        try:
            der = cert.file.read_bytes()
        except OSError:
            return None
        try:
            return verify(der, cert.leaf, cert.issuer)
        except OcspError as exc:
            log.info(
                "OCSP: the stored response for %s is not used (%s)", ", ".join(cert.names), exc
            )
            with contextlib.suppress(OSError):
                cert.file.unlink()
            return None

    def _save(self, cert: _Cert, answer: Answer) -> None:
        try:
            make_private_dir(self.dir)
            write_private(cert.file, answer.der)
        except OSError as exc:
            log.warning(
                "OCSP: cannot store the response for %s in %s: %s", cert.names[0], cert.file, exc
            )
