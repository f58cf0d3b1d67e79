"""OCSP (RFC 6960) for stapling: the request for a certificate, the POST to its responder,
and the checks an answer must pass before it is stapled. Blocking: run in a worker thread.

    leaf, issuer = chain_of(chain_pem)
    url = responders(leaf)[0]                       # the AIA extension's OCSP URLs
    der = fetch(url, request_der(leaf, issuer), timeout=10)
    answer = verify(der, leaf, issuer)              # Answer(status="good", ...) or OcspError

`cryptography` builds the request and parses the answer (the web layer never loads it, so
this lives here, beside the ACME client; meshkit.acme.stapler schedules it).
"""

from __future__ import annotations

import datetime
import urllib.error
import urllib.request
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = [
    "Answer",
    "OcspError",
    "chain_of",
    "fetch",
    "must_staple",
    "request_der",
    "responders",
    "verify",
]

SKEW = 300.0  # seconds of clock difference allowed on thisUpdate (as Go's x/crypto/ocsp users do)
MAX_ANSWER = 1 << 20


class OcspError(Exception):
    """An answer that cannot be stapled, or no answer (the message says which and why)."""


@dataclass(frozen=True)
class Answer:
    """A verified OCSP response for one certificate."""

    der: bytes
    status: str  # "good" or "revoked" ("unknown" is never stapled)
    this_update: float  # unix times
    next_update: float
    revoked_at: float = 0.0
    reason: str = ""

    def refresh_at(self) -> float:
        """Halfway through its validity (Caddy v1's freshOCSP)."""
        return self.this_update + (self.next_update - self.this_update) / 2


def chain_of(chain_pem: bytes) -> tuple[x509.Certificate, x509.Certificate | None]:
    """The leaf and its issuer (the next certificate of the chain, when there is one)."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    leaf = certs[0]
    issuer = next((c for c in certs[1:] if c.subject == leaf.issuer), None)
    return leaf, issuer


def responders(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs of the certificate's Authority Information Access."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def must_staple(cert: x509.Certificate) -> bool:
    """Whether the certificate has RFC 7633's TLS Feature status_request (must-staple)."""
    try:
        feature = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in feature


def request_der(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def fetch(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """POST the request to the responder; its answer's bytes. Raises OcspError."""
    req = urllib.request.Request(
        url,
        data=request,
        method="POST",
        headers={
            "Content-Type": "application/ocsp-request",
            "Accept": "application/ocsp-response",
            "User-Agent": "meshkit",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raise OcspError(f"the responder {url} answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OcspError(f"the responder {url} cannot be reached: {reason}") from None
    if len(body) > MAX_ANSWER:
        raise OcspError(f"the responder {url} answered more than {MAX_ANSWER} bytes")
    return bytes(body)


def _check_signature(signer: x509.Certificate, resp: ocsp.OCSPResponse) -> None:
    key = signer.public_key()
    algo = resp.signature_hash_algorithm
    sig, data = resp.signature, resp.tbs_response_bytes
    try:
        if isinstance(key, rsa.RSAPublicKey) and algo is not None:
            key.verify(sig, data, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algo is not None:
            key.verify(sig, data, ec.ECDSA(algo))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(sig, data)
        else:
            raise OcspError(
                f"the response is signed with an unsupported key ({type(key).__name__})"
            )
    except InvalidSignature:
        raise OcspError("the response's signature does not verify") from None


def _signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """The issuer itself, or a responder certificate it issued for OCSP signing (RFC 6960
    4.2.2.2), whichever the response names as its responder."""

    def named(c: x509.Certificate) -> bool:
        if resp.responder_name is not None:
            return c.subject == resp.responder_name
        digest = hashes.Hash(hashes.SHA1())
        spki = c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest.update(_key_bits(spki))  # (the BIT STRING's value only, RFC 6960 4.2.1)
        return digest.finalize() == resp.responder_key_hash

    if named(issuer):
        return issuer
    for c in resp.certificates:
        if not named(c):
            continue
        try:
            c.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OcspError("the responder's certificate is not issued by the CA") from None
        try:
            eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError("the responder's certificate is not for OCSP signing")
        return c
    raise OcspError("the response is signed by neither the CA nor a responder it delegated")


def _key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's content of a DER SubjectPublicKeyInfo."""

    def header(buf: bytes, at: int) -> tuple[int, int]:  # (content start, content length)
        n = buf[at + 1]
        if n < 0x80:
            return at + 2, n
        k = n & 0x7F
        return at + 2 + k, int.from_bytes(buf[at + 2 : at + 2 + k], "big")

    start, _ = header(spki, 0)  # SEQUENCE
    alg_start, alg_len = header(spki, start)  # AlgorithmIdentifier
    bit_start, bit_len = header(spki, alg_start + alg_len)  # BIT STRING
    return spki[bit_start + 1 : bit_start + bit_len]  # (past the unused-bits byte)


def verify(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime | None = None,
) -> Answer:
    """The answer for `cert` in `der`, checked: a successful response about this very
    certificate (serial, issuer name and key hashes), signed by the issuer or its delegated
    responder, current (thisUpdate not in the future, nextUpdate not passed), good or
    revoked. Raises OcspError saying what is wrong."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspError(f"the answer is not an OCSP response ({exc})") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"the responder answered {resp.response_status.name}")
    mine = ocsp.load_der_ocsp_request(request_der(cert, issuer, resp.hash_algorithm))
    if (
        resp.serial_number != cert.serial_number
        or resp.issuer_key_hash != mine.issuer_key_hash
        or resp.issuer_name_hash != mine.issuer_name_hash
    ):
        raise OcspError("the response is about another certificate")
    _check_signature(_signer(resp, issuer), resp)
    this_update = resp.this_update_utc
    next_update = resp.next_update_utc
    if this_update.timestamp() > now.timestamp() + SKEW:
        raise OcspError(f"the response's thisUpdate {this_update.isoformat()} is in the future")
    if next_update is None:
        raise OcspError("the response has no nextUpdate (it cannot be cached)")
    if next_update <= now:
        raise OcspError(f"the response expired at {next_update.isoformat()} (nextUpdate)")
    status = resp.certificate_status
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        raise OcspError("the responder does not know the certificate (status unknown)")
    if status == ocsp.OCSPCertStatus.REVOKED:
        when = resp.revocation_time_utc
        reason = resp.revocation_reason
        return Answer(
            der,
            "revoked",
            this_update.timestamp(),
            next_update.timestamp(),
            when.timestamp() if when else 0.0,
            reason.name if reason is not None else "",
        )
    return Answer(der, "good", this_update.timestamp(), next_update.timestamp())
