"""The ACME manager over a store that says who may order (meshkit.acme.storage.CertStore), as
the cluster's store does: while another process holds a name's order, this one places none and
serves the certificate the store gets; a certificate stored before the lease came makes the
order moot; the lease is given back after an order, also a failed one, before the retry waits.
No CA is reached: an order that did start would fail and say so in the counts below."""

from __future__ import annotations

import asyncio
import datetime
import threading
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.acme.client import Hooks, Settings
from meshkit.acme.manager import AcmeManager
from meshkit.web.autotls import CertHub, Wanted

NAME = "a.test"


def _pair(days: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem


class LeasedStore:
    """A store in memory whose order lease the test holds or gives."""

    def __init__(self) -> None:
        self.site: tuple[bytes, bytes, dict[str, Any]] | None = None
        self.free = False
        self.taken = 0
        self.ended = 0
        self.retry_in = -1.0
        self.accounts_read = 0  # an order that started reads the account first
        self.lock = threading.Lock()

    def where(self, name: str) -> str:
        return "memory"

    def load_site(self, name: str) -> tuple[bytes, bytes, dict[str, Any]] | None:
        return self.site

    def save_site(self, name: str, cert: bytes, key: bytes, meta: dict[str, Any]) -> None:
        self.site = (cert, key, meta)

    def load_account(self, email: str) -> tuple[bytes, str] | None:
        self.accounts_read += 1
        return None

    def save_account(self, email: str, key: bytes, regr: str) -> None:
        pass

    def take_order(self, name: str) -> bool:
        with self.lock:
            if self.free:
                self.taken += 1
            return self.free

    def end_order(self, name: str, retry_in: float = 0.0) -> None:
        self.ended += 1
        self.retry_in = retry_in

    def hooks(self, local: Hooks) -> Hooks:
        return local


async def _until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_ACME_RETRY", "20ms")


def test_no_order_while_another_holds_it_and_its_certificate_is_served() -> None:
    store = LeasedStore()
    old = _pair(5)  # due for renewal (30 days before expiry)
    store.site = (*old, {})
    new = _pair(90)

    async def run() -> None:
        hub = CertHub()
        mgr = AcmeManager(Settings(ca="https://127.0.0.1:9/dir"), stores=lambda ca: store)
        mgr.start(hub, [Wanted(NAME)])
        try:
            await _until(lambda: hub.certs.get(NAME) == old)  # served meanwhile
            await asyncio.sleep(0.2)
            assert store.accounts_read == 0 and store.taken == 0  # no order placed
            store.site = (*new, {})  # the holder's renewal lands in the store
            await _until(lambda: hub.certs.get(NAME) == new)
            store.free = True  # nothing is due now: the lease is not even asked for
            await asyncio.sleep(0.2)
            assert store.taken == 0 and store.accounts_read == 0
        finally:
            await mgr.stop()

    asyncio.run(run())


def test_a_certificate_stored_before_the_lease_makes_the_order_moot() -> None:
    store = LeasedStore()
    pair = _pair(90)

    class Racing(LeasedStore):
        def take_order(self, name: str) -> bool:
            store.site = (*pair, {})  # another node stored it just before we got the lease
            store.taken += 1
            return True

    racing = Racing()
    racing.load_site = store.load_site  # type: ignore[method-assign]
    racing.end_order = store.end_order  # type: ignore[method-assign]

    async def run() -> None:
        hub = CertHub()
        mgr = AcmeManager(Settings(ca="https://127.0.0.1:9/dir"), stores=lambda ca: racing)
        mgr.start(hub, [Wanted(NAME)])
        try:
            await _until(lambda: hub.certs.get(NAME) == pair)
            await _until(lambda: store.ended == 1)  # the lease is given back
            assert store.taken == 1 and racing.accounts_read == 0 and store.retry_in == 0.0
        finally:
            await mgr.stop()

    asyncio.run(run())


def test_a_failed_order_gives_the_lease_back_before_it_retries() -> None:
    store = LeasedStore()
    store.free = True

    async def run() -> None:
        hub = CertHub()
        # a CA that is not there: every order fails at once
        settings = Settings(ca="https://127.0.0.1:9/dir", timeout=1.0)
        mgr = AcmeManager(settings, stores=lambda ca: store)
        mgr.retry_first = 30.0  # one try in this test
        mgr.start(hub, [Wanted(NAME)])
        try:
            await _until(lambda: store.ended == 1)
            assert store.taken == 1 and store.accounts_read == 1
            # the store is told when this process tries again (the cluster's keeps the lease
            # until then, so that the other nodes do not try the CA meanwhile)
            assert store.retry_in == 30.0
        finally:
            await mgr.stop()

    asyncio.run(run())
