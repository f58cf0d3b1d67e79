"""One ACME order (RFC 8555), blocking: run it in an executor thread.

    settings = Settings(ca=URL, email="", timeout=30, http01=True, alpn01=True)
    chain_pem, key_pem, not_after = obtain(settings, Storage(URL), "a.example", "p256", hub)

The protocol (JWS, nonces, polling) is certbot's `acme` package; this module picks the
challenge, publishes its answer through `hooks` (meshkit.web.autotls.CertHub: HTTP-01 tokens,
TLS-ALPN-01 certificates), and turns what the CA says into Problem with its problem document
whole. `acme` 5 dropped TLS-ALPN-01; the two small classes below are RFC 8737's challenge
and response, registered with its JSON decoder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.jwk import JWK, JWKRSA

from acme import challenges, client, crypto_util, errors, messages
from meshkit.acme.storage import CertStore

__all__ = [
    "DEFAULT_CA",
    "Hooks",
    "Problem",
    "Settings",
    "check_pair",
    "obtain",
]

log = logging.getLogger("meshkit.acme")

DEFAULT_CA = "https://acme-v02.api.letsencrypt.org/directory"  # Caddy v1's default
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier, RFC 8737
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737's response: an empty object once the answer is in place."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737: a certificate for the name with the key authorization's digest, served to
    ALPN `acme-tls/1`."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused: Any) -> str:
        return self.key_authorization(account_key)


class Hooks(Protocol):
    """Where challenge answers go (meshkit.web.autotls.CertHub); called from this thread."""

    def set_token(self, token: str, key_authorization: str) -> None: ...
    def drop_token(self, token: str) -> None: ...
    def set_alpn(self, name: str, cert_pem: bytes, key_pem: bytes) -> None: ...
    def drop_alpn(self, name: str) -> None: ...


@dataclass(frozen=True)
class Settings:
    ca: str = DEFAULT_CA  # the ACME directory URL
    email: str = ""
    timeout: float = 30.0  # -catimeout: each HTTP request to the CA
    http01: bool = True  # -disable-http-challenge turns it off
    alpn01: bool = True  # -disable-tls-alpn-challenge turns it off
    ca_roots: str = ""  # PEM file that verifies the CA's own HTTPS ("" : the system's)
    validation_timeout: float = 90.0  # the CA's validation and issuance, per order


class Problem(Exception):
    """What went wrong with an order, with what the CA said (its problem documents whole).
    `rate_limited`: the CA asked us to wait (back off longer)."""

    def __init__(self, message: str, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited


def _problem_doc(err: messages.Error) -> str:
    try:
        return json.dumps(err.to_json(), sort_keys=True)
    except Exception:
        return str(err)


def make_key(key_type: str) -> Any:
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(65537, int(key_type[3:]))
    return ec.generate_private_key(ec.SECP384R1() if key_type == "p384" else ec.SECP256R1())


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def check_pair(chain_pem: bytes, key_pem: bytes) -> datetime.datetime:
    """The certificate's end of validity; ValueError when the key is not the certificate's
    or the certificate cannot be read."""
    cert = x509.load_pem_x509_certificate(chain_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise ValueError("the key does not match the certificate")
    return cert.not_valid_after_utc


_accounts: dict[tuple[str, str], tuple[client.ClientV2, JWK]] = {}
_lock = threading.Lock()  # one order at a time: one account, one nonce pool


def _client(settings: Settings, storage: CertStore) -> tuple[client.ClientV2, JWK]:
    key_ = (settings.ca, settings.email)
    found = _accounts.get(key_)
    if found is not None:
        return found
    stored = storage.load_account(settings.email)
    if stored is not None:
        key = serialization.load_pem_private_key(stored[0], None)
    else:
        key = rsa.generate_private_key(65537, 2048)
    jwk = JWKRSA(key=key)
    net = client.ClientNetwork(
        jwk,
        user_agent="meshkit",
        verify_ssl=settings.ca_roots or True,  # type: ignore[arg-type]  # requests takes a path
        timeout=int(settings.timeout) or 1,
    )
    directory = client.ClientV2.get_directory(settings.ca, net)
    acme = client.ClientV2(directory, net)
    new = messages.NewRegistration.from_data(
        email=settings.email or None, terms_of_service_agreed=True
    )
    try:
        regr = acme.new_account(new)
    except errors.ConflictError as exc:  # the key has an account already: use it
        regr = acme.query_registration(
            messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        )
    net.account = regr
    if stored is None:
        log.info("ACME: registered an account with %s (%s)", settings.ca, regr.uri)
    storage.save_account(settings.email, _pem(key), regr.json_dumps(indent=2))
    _accounts[key_] = (acme, jwk)
    return acme, jwk


def alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737's self-signed challenge certificate: (cert PEM, key PEM)."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    ext = x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(ext, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem(key)


def obtain(
    settings: Settings,
    storage: CertStore,
    name: str,
    key_type: str,
    hooks: Hooks,
    must_staple: bool = False,
) -> tuple[bytes, bytes, datetime.datetime]:
    """A new certificate for `name`: (chain PEM, key PEM, not after). Raises Problem.
    `must_staple`: the CSR asks for RFC 7633's TLS Feature status_request (`tls {
    must_staple }`); whether the certificate has it is the CA's choice."""
    with _lock:
        try:
            return _obtain(settings, storage, name, key_type, hooks, must_staple)
        except Problem:
            raise
        except errors.ValidationError as exc:
            raise Problem(_validation_problem(name, exc)) from None
        except messages.Error as exc:
            _accounts.pop((settings.ca, settings.email), None)
            raise Problem(
                f"the CA {settings.ca} refused the order for {name}: {_problem_doc(exc)}",
                rate_limited=exc.typ == RATE_LIMITED,
            ) from None
        except errors.TimeoutError:
            raise Problem(
                f"the CA {settings.ca} did not validate and issue {name} within "
                f"{settings.validation_timeout:g}s"
            ) from None
        except Exception as exc:  # the network, a CA speaking something else
            _accounts.pop((settings.ca, settings.email), None)
            raise Problem(
                f"cannot reach the CA {settings.ca}: {type(exc).__name__}: {exc}"
            ) from None


def _validation_problem(name: str, exc: errors.ValidationError) -> str:
    parts = []
    for authzr in exc.failed_authzrs:
        for chall in authzr.body.challenges:
            if chall.error is not None:
                parts.append(f"{chall.chall.typ}: {_problem_doc(chall.error)}")
    what = "; ".join(parts) or "no details"
    return f"validation of {name} failed: {what}"


def make_csr(key_pem: bytes, name: str, must_staple: bool = False) -> bytes:
    """The order's CSR (PEM) for `name`; `must_staple` adds RFC 7633's TLS Feature
    extension (status_request), asking the CA for an OCSP Must-Staple certificate."""
    return bytes(crypto_util.make_csr(key_pem, [name], must_staple=must_staple))


def _obtain(
    settings: Settings,
    storage: CertStore,
    name: str,
    key_type: str,
    hooks: Hooks,
    must_staple: bool,
) -> tuple[bytes, bytes, datetime.datetime]:
    acme, jwk = _client(settings, storage)
    key_pem = _pem(make_key(key_type))
    csr = make_csr(key_pem, name, must_staple)
    order = acme.new_order(csr)
    log.info("ACME: ordered a certificate for %s from %s (%s)", name, settings.ca, order.uri)
    prefs = (("http-01", settings.http01), ("tls-alpn-01", settings.alpn01))
    allowed = [t for t, on in prefs if on]
    cleanup: list[tuple[str, str]] = []
    try:
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            offered = {c.chall.typ: c for c in authzr.body.challenges}
            typ = next((t for t in allowed if t in offered), None)
            if typ is None:
                raise Problem(
                    f"the CA offers no challenge meshkit may answer for {name}: offered "
                    f"{', '.join(sorted(offered)) or 'none'}, "
                    f"allowed {', '.join(allowed) or 'none'}"
                )
            challb = offered[typ]
            keyauth = challb.chall.validation(jwk)
            if typ == "http-01":
                token = challb.chall.encode("token")
                hooks.set_token(token, keyauth)
                cleanup.append(("http-01", token))
            else:
                hooks.set_alpn(name, *alpn_certificate(name, keyauth))
                cleanup.append(("tls-alpn-01", name))
            log.info("ACME: answering %s for %s", typ, name)
            acme.answer_challenge(challb, challb.chall.response(jwk))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=settings.validation_timeout)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for typ, what in cleanup:
            if typ == "http-01":
                hooks.drop_token(what)
            else:
                hooks.drop_alpn(what)
    chain = order.fullchain_pem.encode()
    not_after = check_pair(chain, key_pem)
    return chain, key_pem, not_after
