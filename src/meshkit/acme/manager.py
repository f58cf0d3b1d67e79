"""AcmeManager: the web server's Issuer (meshkit.web.autotls). One task per host name:

1. a stored certificate (meshkit.acme.storage) that is still valid and matches its key is
   served at once (an expired one, or one whose key is not its own, is never served);
2. a name without one, or within the renewal window (30 days before expiry, as Caddy v1),
   gets a new certificate from the CA: the order runs in an executor thread (the `acme`
   package blocks), the result is stored (0600) and swapped into every listener serving
   the name, so renewals need no restart;
3. then it sleeps until the next check (every 12 hours, or the renewal time if sooner);
   a certificate that its OCSP responder says is revoked (meshkit.acme.stapler, through
   meshkit.web.staple.revoked) is renewed at once, as Caddy v1 does.

Where certificates live and who may order is the store's (meshkit.acme.storage.CertStore):
files for `meshkit web`; for nodes with `--web`, the cluster's state, where one node at a time
holds the order for a name (`take_order`) and the others wait for its certificate
(meshkit.cluster.node.webcerts).

A failure (the CA unreachable, a rejected order, a failed challenge) is logged with what the
CA said and retried with backoff (1 minute doubling to 1 hour; rate limits wait the hour);
other names go on. Tests shorten the clocks with MESHKIT_ACME_RENEW_BEFORE,
MESHKIT_ACME_CHECK_EVERY and MESHKIT_ACME_RETRY (Go durations).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from meshkit.acme.client import Problem, Settings, check_pair, obtain
from meshkit.acme.storage import CertStore, Storage
from meshkit.acme.threads import in_daemon_thread
from meshkit.base.cancel import cancel_and_wait
from meshkit.base.durations import parse_duration
from meshkit.web import staple
from meshkit.web.autotls import CertHub, Wanted

__all__ = ["AcmeManager"]

log = logging.getLogger("meshkit.acme")

RENEW_BEFORE = 30 * 86400.0
CHECK_EVERY = 12 * 3600.0
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0


def _retry_in(exc: Problem, delay: float) -> float:
    """Seconds before a failed order is tried again: rate limits wait the longest."""
    return RETRY_MAX if exc.rate_limited else delay


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return parse_duration(value, name) if value else default


class AcmeManager:
    def __init__(
        self,
        settings: Settings,
        root: Path | None = None,
        stores: Callable[[str], CertStore] | None = None,
    ) -> None:
        self.settings = settings
        self.root = root
        # the store of a CA (its directory URL): files under `root` unless told otherwise
        self.stores = stores or (lambda ca: Storage(ca, root))
        self.renew_before = _env("MESHKIT_ACME_RENEW_BEFORE", RENEW_BEFORE)
        self.check_every = _env("MESHKIT_ACME_CHECK_EVERY", CHECK_EVERY)
        self.retry_first = _env("MESHKIT_ACME_RETRY", RETRY_FIRST)
        self.hub: CertHub | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: dict[Wanted, asyncio.Task[None]] = {}
        self.extra: set[Wanted] = set()  # on-demand names (add()), kept across update()
        # names whose certificate was found revoked: renewed at the next wake-up, now
        self.revoked: dict[str, asyncio.Event] = {}

    def start(self, hub: CertHub, names: Sequence[Wanted]) -> None:
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        staple.on_revoked(self.renew_now)
        self.update(names)

    def renew_now(self, names: list[str]) -> None:
        """The OCSP responder says the certificate of `names` is revoked (any thread: the
        stapler's): those this manager keeps get a new certificate at once."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to renew
                self.loop.call_soon_threadsafe(self._renew_now, names)

    def _renew_now(self, names: list[str]) -> None:
        for w in self.tasks:
            if w.name in names:
                log.warning("ACME: renewing the certificate of %s now: it is revoked", w.name)
                self._revoked(w.name).set()

    def _revoked(self, name: str) -> asyncio.Event:
        ev = self.revoked.get(name)
        if ev is None:
            ev = self.revoked[name] = asyncio.Event()
        return ev

    async def _nap(self, name: str, seconds: float) -> None:
        """Sleep `seconds`, or less when the certificate of `name` is found revoked."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._revoked(name).wait(), seconds)

    def add(self, name: Wanted) -> None:
        """One more name to obtain (or load from storage) and renew: on-demand TLS."""
        self.extra.add(name)
        if name not in self.tasks:
            loop = asyncio.get_running_loop()
            self.tasks[name] = loop.create_task(self._keep(name), name=f"acme {name.name}")

    def update(self, names: Sequence[Wanted]) -> None:
        want = set(names) | self.extra
        for w, task in list(self.tasks.items()):
            if w not in want:
                task.cancel()
                del self.tasks[w]
        loop = asyncio.get_running_loop()
        for w in names:
            if w not in self.tasks:
                self.tasks[w] = loop.create_task(self._keep(w), name=f"acme {w.name}")

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            await cancel_and_wait(t)

    def _settings(self, w: Wanted) -> Settings:
        s = self.settings
        if w.email or w.ca:
            from dataclasses import replace

            s = replace(s, email=w.email or s.email, ca=w.ca or s.ca)
        return s

    async def _keep(self, w: Wanted) -> None:
        try:
            await self._keep_inner(w)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: say so; the other names go on
            log.exception("ACME: managing the certificate of %s failed", w.name)

    async def _keep_inner(self, w: Wanted) -> None:
        assert self.hub is not None
        hub = self.hub
        loop = asyncio.get_running_loop()
        settings = self._settings(w)
        storage = self.stores(settings.ca)
        not_after = await loop.run_in_executor(None, self._load_stored, storage, w.name, hub)
        delay = self.retry_first
        revoked = self._revoked(w.name)
        while True:
            now = time.time()
            forced = revoked.is_set()
            if not_after is None or now >= not_after - self.renew_before or forced:
                why = "has none" if not_after is None else "is due for renewal"
                if forced:
                    why = "is revoked"
                if not await loop.run_in_executor(None, storage.take_order, w.name):
                    # another node orders it: its certificate comes through the store
                    await asyncio.sleep(self.retry_first)
                    found = await loop.run_in_executor(
                        None, self._load_stored, storage, w.name, hub
                    )
                    not_after = found or not_after
                    continue
                log.info("ACME: %s %s; asking %s", w.name, why, settings.ca)
                try:
                    not_after = await self._order(storage, w, settings, hub, delay, forced)
                except Problem as exc:
                    wait = _retry_in(exc, delay)
                    log.error(
                        "ACME: no certificate for %s: %s; retrying in %gs%s",
                        w.name,
                        exc,
                        wait,
                        "" if not_after is None else " (the current one is served meanwhile)",
                    )
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = self.retry_first
                revoked.clear()
                hub.renewed(w.name)  # `on certrenew` hooks (meshkit.web.hooks)
            wait = max(1.0, min(self.check_every, not_after - self.renew_before - time.time()))
            await self._nap(w.name, wait)

    async def _order(
        self,
        storage: CertStore,
        w: Wanted,
        settings: Settings,
        hub: CertHub,
        delay: float,
        forced: bool = False,
    ) -> float:
        """Obtain and store a certificate for `w` while holding its order; its end of
        validity. Raises Problem (the order is ended with the wait before the retry, `delay`
        or longer, so that the store can keep other nodes from trying meanwhile)."""
        loop = asyncio.get_running_loop()
        retry_in = 0.0
        try:
            # the order is ours now: a certificate stored meanwhile (by another node) may make
            # it moot
            # (not when the stored one is the revoked one)
            found = await loop.run_in_executor(None, self._load_stored, storage, w.name, hub)
            if found is not None and time.time() < found - self.renew_before and not forced:
                return found
            chain, key, end = await in_daemon_thread(
                obtain,
                settings,
                storage,
                w.name,
                w.key_type,
                storage.hooks(hub),
                w.must_staple,
            )
            await loop.run_in_executor(None, self._store, storage, w, settings, chain, key, end)
        except Problem as exc:
            retry_in = _retry_in(exc, delay)
            raise
        finally:
            await loop.run_in_executor(None, storage.end_order, w.name, retry_in)
        log.info(
            "ACME: certificate for %s obtained, valid until %s; serving it",
            w.name,
            end.isoformat(),
        )
        return end.timestamp()

    def _load_stored(self, storage: CertStore, name: str, hub: CertHub) -> float | None:
        found = storage.load_site(name)
        if found is None:
            return None
        chain, key, _meta = found
        try:
            end = check_pair(chain, key)
        except ValueError as exc:
            log.warning("ACME: the stored certificate of %s is not used (%s)", name, exc)
            return None
        if end <= datetime.datetime.now(datetime.timezone.utc):
            log.warning(
                "ACME: the stored certificate of %s expired at %s; not serving it",
                name,
                end.isoformat(),
            )
            return None
        if hub.certs.get(name) == (chain, key):
            return end.timestamp()  # served already (a look while another node orders)
        try:
            hub.install([name], chain, key)
        except Exception as exc:
            log.warning("ACME: the stored certificate of %s cannot be loaded: %s", name, exc)
            return None
        log.info(
            "ACME: serving the stored certificate of %s (valid until %s, %s)",
            name,
            end.isoformat(),
            storage.where(name),
        )
        return end.timestamp()

    def _store(
        self,
        storage: CertStore,
        w: Wanted,
        settings: Settings,
        chain: bytes,
        key: bytes,
        end: datetime.datetime,
    ) -> None:
        assert self.hub is not None
        # a must-staple certificate is served with a staple from its first handshake: the
        # response is fetched before the swap (without one, status-asking clients are
        # refused until it comes: meshkit.acme.stapler keeps asking)
        if not staple.ready(chain, f"automatic HTTPS for {w.name}"):
            log.warning(
                "ACME: the new certificate of %s is must-staple and has no OCSP response "
                "yet; serving it (clients asking for its status are refused until one comes)",
                w.name,
            )
        self.hub.install([w.name], chain, key)
        meta = {
            "names": [w.name],
            "ca": settings.ca,
            "not_after": end.isoformat(),
            "obtained": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        storage.save_site(w.name, chain, key, meta)
