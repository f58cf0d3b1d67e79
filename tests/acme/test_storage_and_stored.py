"""meshkit.acme without a CA: the storage folder (layout, modes, the data folder's choice),
stored certificates that must not be served (expired, not their key's), and RFC 8737's
challenge certificate."""

from __future__ import annotations

import datetime
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.acme.client import ACME_IDENTIFIER, Settings, alpn_certificate, check_pair
from meshkit.acme.manager import AcmeManager
from meshkit.acme.storage import Storage, data_dir
from meshkit.web.autotls import CertHub


def _pair(days: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem


def test_data_dir_choice() -> None:
    assert data_dir({"MESHKIT_DATA": "/d", "XDG_DATA_HOME": "/x"}) == Path("/d")
    assert data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/meshkit")
    assert str(data_dir({})).endswith("/.local/share/meshkit")


def test_storage_layout_and_modes(tmp_path: Path) -> None:
    st = Storage("https://ca.test:14000/dir", tmp_path)
    cert, key = _pair(30)
    st.save_site("a.test", cert, key, {"names": ["a.test"]})
    st.save_account("me@a.test", b"KEY", "{}")
    site = tmp_path / "acme" / "ca.test:14000" / "sites" / "a.test"
    assert sorted(p.name for p in site.iterdir()) == ["a.test.crt", "a.test.json", "a.test.key"]
    for d in (tmp_path / "acme", site.parent.parent, site, st.user_dir("me@a.test")):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in [*site.iterdir(), *st.user_dir("me@a.test").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert st.load_site("a.test") == (cert, key, {"names": ["a.test"]})
    assert st.load_account("me@a.test") == (b"KEY", "{}")
    assert st.load_site("b.test") is None


@pytest.mark.parametrize("case", ["good", "expired", "mismatch"])
def test_a_stored_certificate_is_served_only_when_valid_and_its_keys(
    tmp_path: Path, case: str
) -> None:
    cert, key = _pair(-1 if case == "expired" else 30)
    if case == "mismatch":
        key = _pair(30)[1]
    st = Storage("https://ca.test/dir", tmp_path)
    st.save_site("a.test", cert, key, {})
    hub = CertHub()
    got = AcmeManager(Settings(ca="https://ca.test/dir"), tmp_path)._load_stored(st, "a.test", hub)
    if case == "good":
        assert got is not None and hub.certs["a.test"] == (cert, key)
    else:
        assert got is None and "a.test" not in hub.certs


def test_check_pair_and_the_alpn_challenge_certificate() -> None:
    cert, key = _pair(5)
    assert check_pair(cert, key) > datetime.datetime.now(datetime.timezone.utc)
    with pytest.raises(ValueError):
        check_pair(cert, _pair(5)[1])
    c_pem, k_pem = alpn_certificate("a.test", "tok.thumb")
    c = x509.load_pem_x509_certificate(c_pem)
    ext = c.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()  # type: ignore[attr-defined]
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test"]
    check_pair(c_pem, k_pem)
