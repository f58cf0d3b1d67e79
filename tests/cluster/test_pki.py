"""The cluster CA and node certificates: subjects, files, renewal times, TLS contexts."""

from __future__ import annotations

import base64
import os
import random
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.cluster.rpc import pki
from meshkit.cluster.rpc.pki import (
    ClusterCA,
    NodeIdentity,
    PeerIdentity,
    PkiError,
    client_ssl_context,
    new_node_key_and_csr,
    peer_identity,
    server_ssl_context,
)


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("cluster-one")


def _name(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def test_ca_is_a_p256_self_signed_ten_year_root(ca: ClusterCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert _name(cert, NameOID.COMMON_NAME) == ["meshkit cluster CA"]
    assert _name(cert, NameOID.ORGANIZATION_NAME) == ["cluster-one"]
    assert cert.issuer == cert.subject
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25
    assert 9.9 < years < 10.1
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(cert)
    assert ca.cluster_id == "cluster-one"
    assert ca.bundle_pem == ca.cert_pem


def test_ca_save_and_load(ca: ClusterCA, tmp_path: Path) -> None:
    ca.save(tmp_path)
    key_file = tmp_path / pki.CA_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [pki.CA_KEY_FILE, pki.CA_CERT_FILE]
    )  # no temporary files left behind
    loaded = ClusterCA.load(tmp_path)
    assert loaded.cert_pem == ca.cert_pem
    assert loaded.cluster_id == ca.cluster_id
    # the loaded key signs: a certificate it issues verifies against the original root
    _, csr = new_node_key_and_csr("n1")
    cert = x509.load_pem_x509_certificate(loaded.sign_csr(csr, "n1", "worker", 60))
    cert.verify_directly_issued_by(ca.cert)


def test_ca_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=str(tmp_path / pki.CA_CERT_FILE)):
        ClusterCA.load(tmp_path)
    other = ClusterCA.create("x")
    with pytest.raises(PkiError, match="does not belong"):
        ClusterCA.from_pem(other.cert_pem, ClusterCA.create("y").key_pem)


def test_sign_csr_overrides_the_requested_subject(ca: ClusterCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "someone-else"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "manager"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "another-cluster"),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    before = time.time()
    cert = x509.load_pem_x509_certificate(ca.sign_csr(csr, "node-7", "worker", 3600))
    assert _name(cert, NameOID.COMMON_NAME) == ["node-7"]
    assert _name(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["worker"]
    assert _name(cert, NameOID.ORGANIZATION_NAME) == ["cluster-one"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-7"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.cert)
    lifetime = cert.not_valid_after_utc.timestamp() - before
    assert 3590 <= lifetime <= 3610 + (time.time() - before)


def test_sign_csr_refuses_bad_input(ca: ClusterCA) -> None:
    _, csr = new_node_key_and_csr("n1")
    with pytest.raises(PkiError, match="not a PEM CSR"):
        ca.sign_csr(b"garbage", "n1", "worker", 60)
    with pytest.raises(PkiError, match="invalid role"):
        ca.sign_csr(csr, "n1", "admin", 60)
    with pytest.raises(PkiError, match="invalid node id"):
        ca.sign_csr(csr, "bad id/..", "worker", 60)
    with pytest.raises(PkiError, match="lifetime"):
        ca.sign_csr(csr, "n1", "worker", 0)
    # a CSR whose signature does not match its key (no proof of possession): the signed
    # part of one CSR with the signature of another, made by a different key
    good = x509.load_pem_x509_csr(csr)
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(good.subject)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    assert len(good.tbs_certrequest_bytes) == len(forged.tbs_certrequest_bytes)
    spliced = forged.public_bytes(serialization.Encoding.DER).replace(
        forged.tbs_certrequest_bytes, good.tbs_certrequest_bytes
    )
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(spliced)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(PkiError, match="invalid signature"):
        ca.sign_csr(pem, "n1", "worker", 60)


def test_node_identity_from_cert(ca: ClusterCA, tmp_path: Path) -> None:
    ident = ca.issue_identity("mgr-1", "manager", lifetime=600)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("mgr-1", "manager", "cluster-one")
    assert ident.ca_pem == ca.bundle_pem
    assert 600 <= ident.not_after - ident.not_before <= 661
    assert not ident.expired()
    assert ident.peer == PeerIdentity("mgr-1", "manager", "cluster-one")

    ident.save(tmp_path)
    assert stat.S_IMODE((tmp_path / pki.NODE_KEY_FILE).stat().st_mode) == 0o600
    assert NodeIdentity.exists(tmp_path)
    assert NodeIdentity.load(tmp_path) == ident
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_node_identity_refuses_mismatches(ca: ClusterCA) -> None:
    ident = ca.issue_identity("n1", "worker", lifetime=600)
    other_key, _ = new_node_key_and_csr("n1")
    with pytest.raises(PkiError, match="does not belong"):
        NodeIdentity.from_cert(ident.cert_pem, other_key, ident.ca_pem)
    foreign = ClusterCA.create("cluster-two")
    with pytest.raises(PkiError, match="not issued by the cluster CA"):
        NodeIdentity.from_cert(ident.cert_pem, ident.key_pem, foreign.cert_pem)
    with pytest.raises(PkiError, match="not a meshkit node certificate"):
        NodeIdentity.from_cert(ca.cert_pem, ca.key_pem, ca.cert_pem)


def test_renew_at_falls_between_50_and_80_percent(ca: ClusterCA) -> None:
    ident = ca.issue_identity("n1", "worker", lifetime=1000)
    span = ident.not_after - ident.not_before
    points = [ident.renew_at(random.Random(seed)) for seed in range(500)]
    for at in points:
        assert ident.not_before + 0.5 * span <= at <= ident.not_before + 0.8 * span
    # spread over the window, not a constant
    fractions = sorted((at - ident.not_before) / span for at in points)
    assert fractions[0] < 0.55 and fractions[-1] > 0.75
    custom = ident.renew_at(random.Random(1), low=0.1, high=0.2)
    assert ident.not_before + 0.1 * span <= custom <= ident.not_before + 0.2 * span
    with pytest.raises(ValueError):
        ident.renew_at(random.Random(1), low=0.9, high=0.2)


def test_short_lifetimes_backdate_little(ca: ClusterCA) -> None:
    ident = ca.issue_identity("n1", "worker", lifetime=4)
    assert ident.lifetime <= 4.5 + 1  # at most a tenth backdated, plus second rounding


def test_peer_identity(ca: ClusterCA) -> None:
    ident = ca.issue_identity("w-3", "worker", lifetime=600)
    der = x509.load_pem_x509_certificate(ident.cert_pem).public_bytes(serialization.Encoding.DER)
    assert peer_identity(der) == PeerIdentity("w-3", "worker", "cluster-one")
    assert not peer_identity(der).is_manager  # type: ignore[union-attr]
    assert peer_identity(None) is None
    assert peer_identity(b"") is None
    assert peer_identity(b"not der") is None
    assert peer_identity(ca.cert.public_bytes(serialization.Encoding.DER)) is None


def test_tls_contexts(ca: ClusterCA) -> None:
    ident = ca.issue_identity("m1", "manager", lifetime=600)
    server = server_ssl_context(ident)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_OPTIONAL
    for cipher in server.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["aead"], cipher["name"]
    client = client_ssl_context(ident, ca.bundle_pem)
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert not client.check_hostname
    joining = client_ssl_context(None, None)
    assert joining.verify_mode == ssl.CERT_NONE
    with pytest.raises(PkiError, match="CA bundle"):
        client_ssl_context(None, b"not pem")
    # the key never lands in a file that outlives the call
    leftovers = [p for p in Path("/proc/self/fd").iterdir() if "memfd:meshkit" in _link(p)]
    assert leftovers == []


def _link(p: Path) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return ""
