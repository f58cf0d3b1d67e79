"""A small OCSP responder (RFC 6960 over HTTP POST and GET) for stapling tests: Python's
http.server on 127.0.0.1 in a thread, answers built with cryptography's OCSPResponseBuilder,
signed by the issuing CA's key (or a delegated responder certificate).

    with ocsp_responder(issuer_cert, issuer_key) as r:   # r.url: http://127.0.0.1:PORT/
        r.status = "revoked"                             # what the next answers say
        r.requests                                       # how many were answered

Also a test CA whose leaf certificates name that responder in their AIA extension."""

from __future__ import annotations

import base64
import datetime
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from support.peers import free_port

__all__ = ["Responder", "issue_with_aia", "make_issuer", "ocsp_responder"]


@dataclass
class Responder:
    issuer: x509.Certificate
    key: Any  # the key that signs answers
    port: int
    signer: x509.Certificate  # the issuer, or a delegated responder certificate
    status: str = "good"  # good | revoked | unknown | error (tryLater) | garbage
    lifetime: float = 3600.0  # seconds from thisUpdate to nextUpdate
    backdate: float = 60.0  # thisUpdate is this many seconds ago
    requests: int = 0
    served: list[int] = field(default_factory=list)  # serial numbers asked about
    revoked_serials: set[int] = field(default_factory=set)  # revoked whatever `status` says

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def answer(self, body: bytes) -> bytes:
        self.requests += 1
        req = ocsp.load_der_ocsp_request(body)
        self.served.append(req.serial_number)
        if self.status == "error":
            return ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.TRY_LATER
            ).public_bytes(serialization.Encoding.DER)
        if self.status == "garbage":
            return b"not an OCSP response"
        now = datetime.datetime.now(datetime.timezone.utc)
        name = "revoked" if req.serial_number in self.revoked_serials else self.status
        status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[name]
        revoked = name == "revoked"
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=req.issuer_name_hash,
                issuer_key_hash=req.issuer_key_hash,
                serial_number=req.serial_number,
                algorithm=req.hash_algorithm,
                cert_status=status,
                this_update=now - datetime.timedelta(seconds=self.backdate),
                next_update=now + datetime.timedelta(seconds=self.lifetime - self.backdate),
                revocation_time=now - datetime.timedelta(hours=1) if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.signer)
        )
        if self.signer is not self.issuer:
            builder = builder.certificates([self.signer])
        resp = builder.sign(self.key, hashes.SHA256())
        return resp.public_bytes(serialization.Encoding.DER)


def _handler(r: Responder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: bytes) -> None:
            try:
                out = r.answer(body)
            except Exception as exc:  # a malformed request: say so, as a responder would
                self.send_error(400, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self._send(self.rfile.read(n))

        def do_GET(self) -> None:
            raw = urllib.parse.unquote(self.path.lstrip("/"))
            self._send(base64.b64decode(raw))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def ocsp_responder(
    issuer: x509.Certificate,
    key: Any,
    *,
    port: int = 0,
    delegate: bool = False,
) -> Iterator[Responder]:
    """Answer on 127.0.0.1:`port` (a free one by default) until the block ends.
    `delegate`: sign with a responder certificate the issuer made for OCSP signing."""
    signer, signing_key = issuer, key
    if delegate:
        signing_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        signer = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test responder")]))
            .issuer_name(issuer.subject)
            .public_key(signing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
            .sign(key, hashes.SHA256())
        )
    r = Responder(issuer, signing_key, port or free_port(), signer)
    server = ThreadingHTTPServer(("127.0.0.1", r.port), _handler(r))
    thread = threading.Thread(target=server.serve_forever, name="ocsp-responder", daemon=True)
    thread.start()
    try:
        yield r
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path


def make_issuer(tmp: Path) -> Issuer:
    """A test CA (ECDSA P-256, 2 days), written to tmp/ocsp-ca.crt."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshkit OCSP test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / "ocsp-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issuer(cert, key, path)


def issue_with_aia(
    ca: Issuer, tmp: Path, stem: str, name: str, ocsp_url: str, must_staple: bool = False
) -> tuple[Path, Path]:
    """(chain file: leaf then CA, key file) for `name`, whose AIA names `ocsp_url`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(aia, critical=False)
    )
    if must_staple:
        builder = builder.add_extension(
            x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    crt, pem = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem
