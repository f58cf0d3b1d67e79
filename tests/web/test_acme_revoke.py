"""`meshkit web -revoke HOST` against Debian's pebble: a certificate obtained by `meshkit web
-agree` is revoked at the CA (pebble's management API lists it as revoked) and deleted from
storage; a CA that cannot be reached and a host with nothing stored are clear errors that
leave storage as it was. Every process is stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from support.pebble import Pebble, have_pebble, run_pebble
from support.peers import Proc, free_port, wait_tcp

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have_pebble(), reason="pebble is not installed"),
]


def _obtain(tmp: Path, ca: Pebble, http: int, https: int, *flags: str) -> None:
    """Run `meshkit web -agree` until it has stored a certificate for a.test, then stop it."""
    www = tmp / "www"
    www.mkdir()
    (tmp / "Caddyfile").write_text(f"a.test {{\n  root {www}\n}}\n")
    proc = Proc(
        [
            sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(tmp / "Caddyfile"),
            "-agree", "-ca", ca.directory, "-http-port", str(http), "-https-port", str(https),
            *flags,
        ],
        {"MESHKIT_DATA": str(tmp / "data"), "MESHKIT_ACME_CA_ROOTS": str(ca.trust)},
    )  # fmt: skip
    try:
        wait_tcp(https, proc)
        deadline = time.monotonic() + 60
        while "certificate for a.test obtained" not in proc.stderr():
            assert proc.popen.poll() is None and time.monotonic() < deadline, proc.stderr()
            time.sleep(0.1)
    finally:
        proc.stop()


def _revoke(
    tmp: Path, ca_url: str, trust: Path, host: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-revoke", host, "-ca", ca_url, *flags],
        env={
            **os.environ,
            "MESHKIT_DATA": str(tmp / "data"),
            "MESHKIT_ACME_CA_ROOTS": str(trust),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def _status(ca: Pebble, serial: int) -> str:
    ctx = ssl.create_default_context(cafile=str(ca.trust))
    url = f"https://127.0.0.1:{ca.mgmt}/cert-status-by-serial/{serial:x}"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return str(json.loads(r.read())["Status"])


def test_revoke_revokes_at_the_ca_and_deletes_from_storage(tmp_path: Path) -> None:
    http, https = free_port(), free_port()
    with run_pebble(tmp_path / "pebble", http_port=http, tls_port=https) as ca:
        _obtain(tmp_path, ca, http, https, "-email", "ops@a.test")
        site = next((tmp_path / "data" / "acme").glob("*/sites/a.test"))
        serial = x509.load_pem_x509_certificate((site / "a.test.crt").read_bytes()).serial_number
        assert _status(ca, serial) == "Valid"

        # the CA cannot be reached (a closed port, with a copy of the certificate in its
        # storage folder): a clear error, exit 1, and the certificate stays
        port = free_port()
        closed = f"https://127.0.0.1:{port}/dir"
        stored = tmp_path / "data" / "acme" / f"127.0.0.1:{port}" / "sites" / "a.test"
        shutil.copytree(site, stored)
        r = _revoke(tmp_path, closed, ca.trust, "a.test")
        assert r.returncode == 1, r
        assert f"-revoke a.test: cannot reach the CA {closed}" in r.stderr
        assert "Traceback" not in r.stderr
        assert (stored / "a.test.crt").exists()
        assert _status(ca, serial) == "Valid"

        r = _revoke(tmp_path, ca.directory, ca.trust, "a.test", "-email", "ops@a.test")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(
            "Revoked certificate for a.test (revoked by the account of ops@a.test; deleted "
        )
        assert _status(ca, serial) == "Revoked"
        assert not site.exists()

        # nothing left to revoke: named, with the folder looked in
        r = _revoke(tmp_path, ca.directory, ca.trust, "a.test")
        assert r.returncode == 1
        assert f"no certificate for a.test in {site.parent}" in r.stderr


def test_revoke_without_the_account_signs_with_the_certificate_key(tmp_path: Path) -> None:
    """No account stored for -email (here: none given, the certificate was obtained with
    one): RFC 8555's other way, the certificate's own key; a second copy of the same
    certificate then meets the CA's alreadyRevoked and is deleted all the same."""
    http, https = free_port(), free_port()
    with run_pebble(tmp_path / "pebble", http_port=http, tls_port=https) as ca:
        _obtain(tmp_path, ca, http, https, "-email", "ops@a.test")
        site = next((tmp_path / "data" / "acme").glob("*/sites/a.test"))
        serial = x509.load_pem_x509_certificate((site / "a.test.crt").read_bytes()).serial_number
        copy = tmp_path / "copy"
        shutil.copytree(site, copy)
        r = _revoke(tmp_path, ca.directory, ca.trust, "a.test")
        assert r.returncode == 0, r.stderr
        assert "revoked with the certificate's own key" in r.stdout
        assert _status(ca, serial) == "Revoked"
        shutil.copytree(copy, site)
        r = _revoke(tmp_path, ca.directory, ca.trust, "a.test")
        assert r.returncode == 0, r.stderr
        assert "already revoked at the CA" in r.stdout
        assert not site.exists()


def test_revoke_flag_errors(tmp_path: Path) -> None:
    r = _revoke(tmp_path, "ftp://x", tmp_path / "none.pem", "a.test")
    assert r.returncode == 2 and "-ca" in r.stderr
    r = _revoke(tmp_path, "https://127.0.0.1:1/dir", tmp_path / "none.pem", "../x")
    assert r.returncode == 2 and "-revoke" in r.stderr
