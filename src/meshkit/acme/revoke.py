"""`meshkit web -revoke HOST` (Caddy v1's flag): revoke the stored certificate of HOST at its
ACME CA, then delete it from storage so it is never served again.

    revoke(Settings(ca=URL, email=E), Storage(URL), "a.example")   # raises Problem

As v1's caddytls ACMEClient.Revoke: the certificate comes from the CA's storage folder (no
folder: an error naming it), the request is signed with the -email account when one is stored
for this CA; without one, or when the CA says that account may not revoke it, with the
certificate's own private key (RFC 8555 section 7.6), so no new account (and no -agree) is
needed. A certificate the CA already lists as revoked is deleted all the same.
"""

from __future__ import annotations

import logging
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import jwa
from josepy.jwk import JWK, JWKEC, JWKRSA

from acme import client, errors, messages
from meshkit.acme.client import Problem, Settings, _problem_doc
from meshkit.acme.storage import Storage

__all__ = ["revoke"]

log = logging.getLogger("meshkit.acme")

ALREADY_REVOKED = "urn:ietf:params:acme:error:alreadyRevoked"
UNAUTHORIZED = "urn:ietf:params:acme:error:unauthorized"


def _signer(key_pem: bytes) -> tuple[JWK, jwa.JWASignature]:
    """A JWK and its JWS algorithm for a PEM private key (the account's or the cert's)."""
    key = serialization.load_pem_private_key(key_pem, None)
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), jwa.RS256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {256: jwa.ES256, 384: jwa.ES384, 521: jwa.ES512}.get(key.curve.key_size)
        if alg is not None:
            return JWKEC(key=key), alg
    raise Problem(f"cannot sign with a {type(key).__name__} key")


def _send(settings: Settings, key_pem: bytes, regr: str, cert: x509.Certificate) -> None:
    jwk, alg = _signer(key_pem)
    net = client.ClientNetwork(
        jwk,
        alg=alg,
        user_agent="meshkit",
        verify_ssl=settings.ca_roots or True,  # type: ignore[arg-type]  # requests takes a path
        timeout=int(settings.timeout) or 1,
    )
    if regr:  # signed by the account (its kid); else by the key itself (its jwk)
        net.account = messages.RegistrationResource.json_loads(regr)
    directory = client.ClientV2.get_directory(settings.ca, net)
    client.ClientV2(directory, net).revoke(cert, 0)


def revoke(settings: Settings, storage: Storage, host: str) -> str:
    """Revoke and delete HOST's stored certificate; what happened, for the user. Problem
    when there is nothing to revoke, the CA cannot be reached or refuses."""
    found = storage.load_site(host)
    where = storage.site_dir(host)
    if found is None:
        raise Problem(f"no certificate for {host} in {where.parent}")
    chain, cert_key, _meta = found
    try:
        cert = x509.load_pem_x509_certificate(chain)
    except ValueError as exc:
        raise Problem(f"the stored certificate of {host} ({where}) cannot be read: {exc}") from None
    account = storage.load_account(settings.email)
    note = f"revoked by the account of {settings.email or 'default'}"
    try:
        try:
            if account is None or not account[1]:
                raise _NoAccount
            _send(settings, account[0], account[1], cert)
        except (_NoAccount, messages.Error) as exc:
            if isinstance(exc, messages.Error) and exc.typ != UNAUTHORIZED:
                raise
            note = "revoked with the certificate's own key"
            log.info("ACME: revoking %s with the certificate's own key", host)
            _send(settings, cert_key, "", cert)
    except messages.Error as exc:
        if exc.typ != ALREADY_REVOKED:
            raise Problem(
                f"the CA {settings.ca} refused to revoke the certificate of {host}: "
                f"{_problem_doc(exc)}"
            ) from None
        note = "already revoked at the CA"
    except (Problem, errors.Error) as exc:
        raise Problem(f"revoking the certificate of {host}: {exc}") from None
    except Exception as exc:  # the network, a CA speaking something else
        raise Problem(f"cannot reach the CA {settings.ca}: {type(exc).__name__}: {exc}") from None
    try:
        shutil.rmtree(where)
    except OSError as exc:
        raise Problem(
            f"the certificate of {host} is {note}, but {where} could not be deleted: "
            f"{exc.strerror or exc}"
        ) from None
    return f"{note}; deleted {where}"


class _NoAccount(Exception):
    """No account stored for the email: sign with the certificate's key."""
