"""The proxy to https:// upstreams: a real TLS backend (Python's http.server behind ssl, with a
certificate made for the test), curl as the client."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import logging
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.e2e_util import curl
from support.webproxy import _close, _proxy

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"tls backend saw {self.path} host={self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[int]:
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_https_upstream_with_skip_verify(tls_backend: int, tmp_path: Path) -> None:
    p = _proxy(f":2015\nproxy / https://127.0.0.1:{tls_backend} {{\n insecure_skip_verify\n}}\n")
    try:
        for _ in range(3):  # the kept TLS connection serves the next requests too
            r = curl(p.port, "/page?x=1", tmp=tmp_path)
            assert r.status == 200
            assert r.body.startswith(b"tls backend saw /page?x=1")
    finally:
        _close(p)


def test_https_upstream_unverified_certificate_is_refused(
    tls_backend: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = _proxy(f":2015\nproxy / https://127.0.0.1:{tls_backend}\n")
    try:
        with caplog.at_level(logging.ERROR, logger="meshkit.web"):
            r = curl(p.port, "/page", tmp=tmp_path)
        assert r.status == 502
        assert str(tls_backend) not in r.body.decode()  # the upstream is named in the log only
        assert any(str(tls_backend) in rec.getMessage() for rec in caplog.records)
    finally:
        _close(p)
