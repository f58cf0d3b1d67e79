"""The cluster CA, node certificates and the TLS contexts of the control plane.

- ``ClusterCA``: an ECDSA P-256 root made at ``meshkit node init`` (10 years, self-signed,
  CN "meshkit cluster CA", O = cluster id). It signs node certificates from CSRs and ignores
  whatever subject a CSR asks for.
- Node certificates: CN = node id, OU = role (``manager`` or ``worker``), O = cluster id,
  the node id as a DNS subject alternative name, clientAuth + serverAuth. They are the only
  credential on the wire: the role a peer has is the OU of its verified certificate.
- ``NodeIdentity``: a node's certificate, key and the CA it trusts, with its renewal time
  (a random point between 50 % and 80 % of the lifetime, like swarm).
- ``server_ssl_context`` / ``client_ssl_context``: TLS 1.2+ with AEAD ciphers only. The
  server asks for a client certificate but does not require one, so that a joining node can
  fetch the CA bundle and send its CSR; every other method must check ``Peer.identity``.
  Certificates are checked against the cluster CA, not against host names: the peer's
  CN/OU/O say who it is (see ``peer_identity``).

Private keys are written atomically (temporary file, fsync, rename) with mode 0600.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import re
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.base.errors import MeshkitError

Role = Literal["manager", "worker"]
ROLES: tuple[Role, ...] = ("manager", "worker")

CA_COMMON_NAME = "meshkit cluster CA"
CA_LIFETIME = 10 * 365.25 * 86400.0
"""Lifetime of the cluster root, in seconds (10 years)."""

NODE_CERT_LIFETIME = 90 * 86400.0
"""Default lifetime of a node certificate, in seconds (90 days, like swarm)."""

RENEW_LOW = 0.5
RENEW_HIGH = 0.8
"""Renewal happens at a random fraction of the lifetime in [RENEW_LOW, RENEW_HIGH]."""

MAX_BACKDATE = 300.0
"""Node certificates start up to this many seconds before they are issued (clock skew);
never more than a tenth of the lifetime, so that short test lifetimes stay meaningful."""

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
NODE_CERT_FILE = "node.crt"
NODE_KEY_FILE = "node.key"
NODE_CA_FILE = "ca-bundle.crt"

TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""TLS 1.2 cipher suites: forward secrecy and AEAD only (TLS 1.3 suites are all AEAD)."""

_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class PkiError(MeshkitError):
    """A certificate, key or CSR that cannot be used; the message says which and why."""


class TrustError(MeshkitError):
    """A peer that cannot be trusted (its CA does not match the join token, for instance)."""


# --------------------------------------------------------------------------- helpers


def _now() -> float:
    """The current wall-clock time, as a Unix timestamp."""
    return time.time()


def _utc(ts: float) -> dt.datetime:
    """A Unix timestamp as an aware UTC datetime (what ``cryptography`` wants)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The single string value of one attribute of a name, or None when absent or repeated."""
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def check_node_id(node_id: str) -> None:
    """Raise PkiError unless node_id can be a CN and a DNS SAN (letters, digits, ``_.-``)."""
    if not _NODE_ID_RE.fullmatch(node_id):
        raise PkiError(
            f"invalid node id {node_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def check_role(role: str) -> Role:
    """``role`` as a Role; PkiError unless it is "manager" or "worker"."""
    if role not in ROLES:
        raise PkiError(f"invalid role {role!r}: expected 'manager' or 'worker'")
    return role


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    """The first certificate in a PEM blob; PkiError naming ``what`` otherwise."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate: {exc}") from exc


def _load_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC private key from PEM; PkiError naming ``what`` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what} is not an ECDSA key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """True when the certificate carries the public half of ``key``."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(der, fmt) == key.public_key().public_bytes(der, fmt))


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same directory created
    with ``mode``, fsync, rename over ``path``, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _read(path: Path, what: str) -> bytes:
    """The bytes of a file; PkiError naming the file and ``what`` it should be otherwise."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- cluster CA


class ClusterCA:
    """The cluster's root CA: an ECDSA P-256 key and its self-signed certificate."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap an existing root certificate and its key (see ``create``, ``load``)."""
        if not _same_public_key(cert, key):
            raise PkiError("the CA key does not belong to the CA certificate")
        cluster_id = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
        if not cluster_id:
            raise PkiError("the CA certificate has no organisation (cluster id) in its subject")
        self._cert = cert
        self._key = key
        self._cluster_id = cluster_id

    @classmethod
    def create(
        cls, cluster_id: str, lifetime: float = CA_LIFETIME, path_length: int = 0
    ) -> ClusterCA:
        """A new root: ECDSA P-256, self-signed, CN "meshkit cluster CA", O = cluster_id.

        ``path_length`` 1 lets a later rotation's cross-signed root sit under this one (a
        root made by `cluster ca --rotate` has it; the first root of older clusters has 0)."""
        if not cluster_id or not cluster_id.isprintable():
            raise PkiError(f"invalid cluster id {cluster_id!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - MAX_BACKDATE))
            .not_valid_after(_utc(now + lifetime))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> ClusterCA:
        """A CA from its certificate and key in PEM (as replicated between managers)."""
        return cls(_load_cert(cert_pem, "the CA certificate"), _load_key(key_pem, "the CA key"))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ClusterCA:
        """Load ``ca.crt`` and ``ca.key`` from ``directory``."""
        d = Path(directory)
        return cls.from_pem(
            _read(d / CA_CERT_FILE, "CA certificate"), _read(d / CA_KEY_FILE, "CA key")
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``ca.crt`` and ``ca.key`` (both 0600: they live in a private data dir) to
        ``directory`` (made 0700), each atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        write_atomic(d / CA_KEY_FILE, self.key_pem, 0o600)
        write_atomic(d / CA_CERT_FILE, self.cert_pem, 0o600)

    @property
    def cert(self) -> x509.Certificate:
        """The root certificate."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The root certificate in PEM."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The root's private key, unencrypted PKCS#8 PEM: hand it to managers only."""
        return _key_pem(self._key)

    @property
    def bundle_pem(self) -> bytes:
        """The CA bundle nodes trust, and what a join token's digest is taken over."""
        return self.cert_pem

    @property
    def cluster_id(self) -> str:
        """The cluster id (the root's O)."""
        return self._cluster_id

    def sign_csr(
        self,
        csr_pem: bytes,
        node_id: str,
        role: str,
        lifetime: float = NODE_CERT_LIFETIME,
        now: float | None = None,
    ) -> bytes:
        """Issue a node certificate (PEM) for the key in ``csr_pem``.

        The subject the CSR asks for is ignored: CN = node_id, OU = role, O = cluster id,
        SAN = node_id as a DNS name, EKU clientAuth + serverAuth. The CSR's signature is
        checked (proof that the requester holds the key). ``now`` (default: the current
        time) is when the certificate is issued; it is valid from shortly before that for
        ``lifetime`` seconds. Raises PkiError for a bad CSR, node id, role or lifetime.
        """
        check_node_id(node_id)
        checked_role = check_role(role)
        if not lifetime > 0:
            raise PkiError(f"invalid certificate lifetime {lifetime!r}: must be positive")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError(f"the certificate signing request is not a PEM CSR: {exc}") from exc
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
            raise PkiError(f"the certificate signing request cannot be checked: {exc}") from exc
        if not valid:
            raise PkiError("the certificate signing request has an invalid signature")
        try:
            public_key = csr.public_key()
        except ValueError as exc:
            raise PkiError(f"the certificate signing request has a bad key: {exc}") from exc
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
                raise PkiError(f"unsupported key curve {public_key.curve.name} in the CSR")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise PkiError(f"RSA key of {public_key.key_size} bits in the CSR is too small")
        else:
            raise PkiError("unsupported key type in the CSR: use ECDSA (P-256) or RSA")
        issued = _now() if now is None else now
        backdate = min(MAX_BACKDATE, lifetime / 10.0)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, checked_role),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._cluster_id),
            ]
        )
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(issued - backdate))
            .not_valid_after(_utc(issued + lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def cross_sign(self, new_root: x509.Certificate) -> bytes:
        """``new_root`` re-issued by this root (PEM): the same subject and key, so a node that
        still trusts only this root can follow a chain leaf -> cross-signed root -> this root.

        Like swarm's CA rotation: node certificates from the new root are sent with this
        certificate after them while the old root is still trusted somewhere."""
        ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        new_ski = new_root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        basic = new_root.extensions.get_extension_for_class(x509.BasicConstraints)
        usage = new_root.extensions.get_extension_for_class(x509.KeyUsage)
        cert = (
            x509.CertificateBuilder()
            .subject_name(new_root.subject)
            .issuer_name(self._cert.subject)
            .public_key(new_root.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(new_root.not_valid_before_utc)
            .not_valid_after(min(new_root.not_valid_after_utc, self._cert.not_valid_after_utc))
            .add_extension(basic.value, critical=True)
            .add_extension(usage.value, critical=True)
            .add_extension(new_ski.value, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_identity(
        self, node_id: str, role: str, lifetime: float = NODE_CERT_LIFETIME
    ) -> NodeIdentity:
        """A new key and certificate for a node, signed here (the first manager's own)."""
        key_pem, csr_pem = new_node_key_and_csr(node_id)
        cert_pem = self.sign_csr(csr_pem, node_id, role, lifetime)
        return NodeIdentity.from_cert(cert_pem, key_pem, self.bundle_pem)


def certs_in(pem: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a CA bundle holds two roots during a rotation)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate: {exc}") from exc
    return certs


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (and the names chain)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_id(cert_pem: bytes) -> str:
    """The subject key identifier of the first certificate in ``cert_pem``, in hex."""
    cert = _load_cert(cert_pem, "the certificate")
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def issuer_key_id(cert_pem: bytes) -> str:
    """The authority key identifier of the first certificate in ``cert_pem``, in hex ("" when
    it has none): which root signed a node certificate."""
    cert = _load_cert(cert_pem, "the certificate")
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    return (aki.key_identifier or b"").hex()


def new_node_key_and_csr(node_id: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a CSR for it with CN = node_id: ``(key_pem, csr_pem)``."""
    check_node_id(node_id)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class PeerIdentity:
    """Who a TLS peer is, read from its (already verified) node certificate."""

    node_id: str
    role: Role
    cluster_id: str

    @property
    def is_manager(self) -> bool:
        """True for a manager's certificate (OU = manager)."""
        return self.role == "manager"


def _identity_of(cert: x509.Certificate) -> PeerIdentity | None:
    """CN/OU/O of a node certificate, or None when they are not a node's."""
    node_id = _attr(cert.subject, NameOID.COMMON_NAME)
    role = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    cluster_id = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
    if not node_id or role not in ROLES or not cluster_id:
        return None
    return PeerIdentity(node_id, role, cluster_id)


def peer_identity(cert_der: bytes | None) -> PeerIdentity | None:
    """node_id/role/cluster_id from a peer's certificate (DER, as TLS hands it over).

    The certificate must already have been verified by TLS against the cluster CA. None when
    there is no certificate, or it does not name a node (missing or unknown CN/OU/O).
    """
    if not cert_der:
        return None
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        return None
    return _identity_of(cert)


@dataclass
class NodeIdentity:
    """A node's credentials: its certificate and key, and the CA bundle it trusts."""

    node_id: str
    role: Role
    cluster_id: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_before: float
    not_after: float

    @classmethod
    def from_cert(cls, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> NodeIdentity:
        """An identity from PEM parts; node id, role, cluster id and validity come from the
        certificate. Raises PkiError when the key does not match the certificate, the
        certificate is not a node certificate, or it was not issued by the CA in ca_pem."""
        cert = _load_cert(cert_pem, "the node certificate")
        key = _load_key(key_pem, "the node key")
        roots = certs_in(ca_pem, "the CA bundle")
        if not _same_public_key(cert, key):
            raise PkiError("the node key does not belong to the node certificate")
        ident = _identity_of(cert)
        if ident is None:
            raise PkiError(
                "the certificate is not a meshkit node certificate "
                "(needs CN = node id, OU = manager or worker, O = cluster id)"
            )
        if not any(issued_by(cert, root) for root in roots):
            raise PkiError(
                f"the node certificate of {ident.node_id} was not issued by the cluster CA"
            )
        return cls(
            node_id=ident.node_id,
            role=ident.role,
            cluster_id=ident.cluster_id,
            cert_pem=cert_pem,
            key_pem=key_pem,
            ca_pem=ca_pem,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeIdentity:
        """Load ``node.crt``, ``node.key`` and ``ca-bundle.crt`` from ``directory``."""
        d = Path(directory)
        return cls.from_cert(
            _read(d / NODE_CERT_FILE, "node certificate"),
            _read(d / NODE_KEY_FILE, "node key"),
            _read(d / NODE_CA_FILE, "CA bundle"),
        )

    @classmethod
    def exists(cls, directory: str | os.PathLike[str]) -> bool:
        """True when ``directory`` holds a node certificate and key."""
        d = Path(directory)
        return (d / NODE_CERT_FILE).exists() and (d / NODE_KEY_FILE).exists()

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write key, CA bundle and certificate (all 0600, in ``directory`` made 0700)
        atomically, the certificate last."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        write_atomic(d / NODE_KEY_FILE, self.key_pem, 0o600)
        write_atomic(d / NODE_CA_FILE, self.ca_pem, 0o600)  # the data dir is private
        write_atomic(d / NODE_CERT_FILE, self.cert_pem, 0o600)

    @property
    def lifetime(self) -> float:
        """Seconds between not_before and not_after."""
        return self.not_after - self.not_before

    def renew_at(
        self, rng: random.Random, low: float = RENEW_LOW, high: float = RENEW_HIGH
    ) -> float:
        """When to renew (absolute Unix time): a uniformly random point between ``low`` and
        ``high`` of the way from not_before to not_after."""
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"renewal window [{low}, {high}] is not within [0, 1]")
        return self.not_before + rng.uniform(low, high) * self.lifetime

    def expired(self, now: float | None = None) -> bool:
        """True when the certificate is not valid at ``now`` (default: the current time)."""
        t = _now() if now is None else now
        return not self.not_before <= t <= self.not_after

    @property
    def peer(self) -> PeerIdentity:
        """This identity as a peer would see it."""
        return PeerIdentity(self.node_id, self.role, self.cluster_id)


# --------------------------------------------------------------------------- TLS


@contextlib.contextmanager
def _pem_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Paths the ssl module can load a certificate and key from, without the key touching
    a disk: anonymous memory files (memfd) where the kernel has them, else a private
    temporary directory that is removed at once."""
    fds: list[int] = []
    try:
        for blob in (cert_pem, key_pem):
            fd = os.memfd_create("meshkit-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
    except (AttributeError, OSError):
        for fd in fds:
            os.close(fd)
        fds = []
    if fds:
        try:
            yield (f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(cert_path, cert_pem, 0o600)
        yield (str(cert_path), str(key_path))


def _base_context(protocol: int) -> ssl.SSLContext:
    """An SSLContext with TLS 1.2 as the floor, AEAD ciphers and no compression."""
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_identity(ctx: ssl.SSLContext, identity: NodeIdentity) -> None:
    """Load a node's certificate and key into ``ctx``."""
    with _pem_paths(identity.cert_pem, identity.key_pem) as (cert_path, key_path):
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise PkiError(f"cannot use the certificate of {identity.node_id}: {exc}") from exc


def reload_identity(ctx: ssl.SSLContext, identity: NodeIdentity) -> None:
    """Swap the certificate and key of an existing context (after a renewal or a role
    change): connections made from now on present the new certificate, open ones keep
    theirs.

    The trusted roots change too (a CA rotation adds the new root, then drops the old one). A
    context can only add roots, so a server context (``server_ssl_context``) gets a fresh
    context that its handshakes switch to (see ``_switch_context``); any other context gains
    the bundle's roots."""
    _load_identity(ctx, identity)
    if getattr(ctx, "meshkit_server", False):
        ctx.meshkit_current = _server_context(identity)  # type: ignore[attr-defined]
    else:
        _load_ca(ctx, identity.ca_pem)


def _load_ca(ctx: ssl.SSLContext, ca_pem: bytes) -> None:
    """Trust exactly the certificates in ``ca_pem``."""
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise PkiError(f"cannot use the CA bundle: {exc}") from exc


def _server_context(identity: NodeIdentity) -> ssl.SSLContext:
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(ctx, identity)
    _load_ca(ctx, identity.ca_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # No TLS 1.3 session tickets: no client resumes a session (each keeps one connection per
    # manager), and making two tickets was a third of the server's handshake CPU.
    ctx.num_tickets = 0
    return ctx


def _switch_context(sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
    """At each ClientHello: hand the handshake to the context of the latest identity (what
    `reload_identity` made), whose roots are exactly the current bundle's."""
    current = getattr(ctx, "meshkit_current", None)
    if current is not None:
        sslobj.context = current


def server_ssl_context(identity: NodeIdentity) -> ssl.SSLContext:
    """The TLS context of a node's port 2377: its own certificate, client certificates
    optional but verified against the cluster CA when presented (a bad or expired one
    fails the handshake); a peer without one may only fetch the CA and join.

    It can be given a new identity (``reload_identity``) while a listener uses it."""
    ctx = _server_context(identity)
    ctx.meshkit_server = True  # type: ignore[attr-defined]
    ctx.meshkit_current = None  # type: ignore[attr-defined]
    ctx.sni_callback = _switch_context  # type: ignore[assignment]
    return ctx


def client_ssl_context(identity: NodeIdentity | None, ca_pem: bytes | None) -> ssl.SSLContext:
    """The TLS context for dialling a manager.

    ``identity`` None: no client certificate (a joining node). ``ca_pem`` None: the server
    is not verified at all, which is only for fetching the CA bundle that is then checked
    against the join token's digest. Host names are not checked: the server's certificate
    must come from the cluster CA, and callers check its CN/OU/O (``peer_identity``).
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        _load_ca(ctx, ca_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if identity is not None:
        _load_identity(ctx, identity)
    return ctx
