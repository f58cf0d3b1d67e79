"""OCSP stapling (Caddy v1: every served certificate with a responder gets its response
stapled) and `tls { must_staple }`: a real OCSP responder (http.server + cryptography's
OCSPResponseBuilder on 127.0.0.1) for a test CA whose certificates name it in their AIA, a
real `meshkit web`, and `openssl s_client -status` reading what is stapled."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.acme.ocsp import OcspError, chain_of, must_staple, request_der, responders, verify
from meshkit.web import staple
from support.ocspresponder import issue_with_aia, make_issuer, ocsp_responder
from support.pebble import have_pebble, run_pebble
from support.peers import Proc, free_port, wait_tcp

needs_stapling = pytest.mark.skipif(
    not staple.available(), reason=f"no OCSP stapling here: {staple.unavailable_reason()}"
)


# --- verify(): what a response must be before it is stapled (no processes) ---


def _leaf(tmp: Path, url: str = "http://127.0.0.1:9/", must: bool = False):  # type: ignore[no-untyped-def]
    ca = make_issuer(tmp)
    crt, _ = issue_with_aia(ca, tmp, "leaf", "a.test", url, must_staple=must)
    leaf, issuer = chain_of(crt.read_bytes())
    assert issuer is not None
    return ca, leaf, issuer


def test_verify_good_revoked_and_what_is_refused(tmp_path: Path) -> None:
    ca, leaf, issuer = _leaf(tmp_path, must=True)
    assert responders(leaf) == ["http://127.0.0.1:9/"]
    assert must_staple(leaf)
    req = request_der(leaf, issuer)
    with ocsp_responder(ca.cert, ca.key) as r:
        good = verify(r.answer(req), leaf, issuer)
        assert good.status == "good"
        assert good.this_update < good.refresh_at() < good.next_update
        r.status = "revoked"
        bad = verify(r.answer(req), leaf, issuer)
        assert (bad.status, bad.reason) == ("revoked", "key_compromise")
        r.status = "unknown"
        with pytest.raises(OcspError, match="status unknown"):
            verify(r.answer(req), leaf, issuer)
        r.status = "error"
        with pytest.raises(OcspError, match="TRY_LATER"):
            verify(r.answer(req), leaf, issuer)
        r.status = "garbage"
        with pytest.raises(OcspError, match="not an OCSP response"):
            verify(r.answer(req), leaf, issuer)
        r.status = "good"
        der = r.answer(req)
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
        with pytest.raises(OcspError, match="expired"):
            verify(der, leaf, issuer, now=later)
        # a response about another certificate of the same CA
        other_crt, _ = issue_with_aia(ca, tmp_path, "other", "b.test", r.url)
        other, _ = chain_of(other_crt.read_bytes())
        with pytest.raises(OcspError, match="another certificate"):
            verify(r.answer(request_der(other, issuer)), leaf, issuer)
        # a signature that is not the CA's (its last byte changed)
        der = r.answer(req)
        with pytest.raises(OcspError, match="signature does not verify"):
            verify(der[:-1] + bytes([der[-1] ^ 1]), leaf, issuer)


def test_verify_delegated_responder(tmp_path: Path) -> None:
    ca, leaf, issuer = _leaf(tmp_path)
    with ocsp_responder(ca.cert, ca.key, delegate=True) as r:
        assert verify(r.answer(request_der(leaf, issuer)), leaf, issuer).status == "good"
    # a "responder" that the CA did not issue
    (tmp_path / "other").mkdir()
    other = make_issuer(tmp_path / "other")
    with (
        ocsp_responder(other.cert, other.key, delegate=True) as r,
        pytest.raises(OcspError, match="not issued by the CA"),
    ):
        verify(r.answer(request_der(leaf, issuer)), leaf, issuer)


def test_csr_asks_for_must_staple() -> None:
    from cryptography import x509

    from meshkit.acme.client import _pem, make_csr, make_key

    key = _pem(make_key("p256"))
    for must in (True, False):
        csr = x509.load_pem_x509_csr(make_csr(key, "a.test", must))
        try:
            ext = csr.extensions.get_extension_for_class(x509.TLSFeature).value
        except x509.ExtensionNotFound:
            ext = None
        assert (ext is not None) is must
        if must:
            assert list(ext) == [x509.TLSFeatureType.status_request]


# --- `tls { must_staple }` at load ---


def _validate(tmp: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    conf = tmp / "Caddyfile"
    conf.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-validate", "-conf", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_must_staple_refused_without_the_extension(tmp_path: Path) -> None:
    text = "https://a.test {\n    tls ops@a.test {\n        must_staple\n    }\n}\n"
    out = _validate(tmp_path, text, MESHKIT_NO_EXTENSIONS="1")
    assert out.returncode == 1
    assert f"{tmp_path / 'Caddyfile'}:3" in out.stderr
    assert "must_staple needs OCSP stapling" in out.stderr
    assert "MESHKIT_NO_EXTENSIONS=1" in out.stderr


@needs_stapling
def test_must_staple_parse(tmp_path: Path) -> None:
    out = _validate(
        tmp_path, "https://a.test {\n    tls ops@a.test {\n        must_staple\n    }\n}\n"
    )
    assert out.returncode == 0, out.stderr
    ca = make_issuer(tmp_path)
    crt, key = issue_with_aia(ca, tmp_path, "leaf", "a.test", "http://127.0.0.1:9/")
    own = f"https://a.test {{\n    tls {crt} {key} {{\n        must_staple\n    }}\n}}\n"
    out = _validate(tmp_path, own)
    assert out.returncode == 1
    assert "must_staple is for automatic HTTPS" in out.stderr
    out = _validate(
        tmp_path, "https://a.test {\n    tls ops@a.test {\n        must_staple now\n    }\n}\n"
    )
    assert out.returncode == 1 and ":3" in out.stderr


# --- end to end: meshkit web + the responder + openssl s_client -status ---


def _serve(tmp: Path, crt: Path, key: Path, **env: str) -> tuple[Proc, int]:
    port = free_port()
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("stapled\n")
    conf = tmp / "Caddyfile"
    conf.write_text(f"https://a.test:{port} {{\n    root {www}\n    tls {crt} {key}\n}}\n")
    proc = Proc(
        [sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf)],
        {"MESHKIT_DATA": str(tmp / "data"), **env},
    )
    wait_tcp(port, proc)
    return proc, port


def s_client(port: int, *, status: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test"]
    return subprocess.run(
        [*argv, *(["-status"] if status else [])],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for(check, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"never {what}: {last!r}")


def _stapled(port: int) -> str:
    out = s_client(port).stdout
    return out if "OCSP Response Status: successful" in out else ""


@needs_stapling
def test_staples_a_good_response_and_keeps_it_on_disk(tmp_path: Path) -> None:
    ca = make_issuer(tmp_path)
    with ocsp_responder(ca.cert, ca.key) as r:
        crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", r.url)
        proc, port = _serve(tmp_path, crt, key)
        try:
            out = wait_for(lambda: _stapled(port), "stapled")
            assert re.search(r"Cert Status: good", out), out
            assert "Response Type: Basic OCSP Response" in out
            assert r.requests == 1
            # the TLS 1.2 form too (status_request in ServerHello + CertificateStatus)
            tls12 = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                 "a.test", "-status", "-tls1_2"],
                input="", capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            assert "Cert Status: good" in tls12
            # a client that does not ask gets no staple (and the handshake still works)
            plain = s_client(port, status=False)
            assert "Verify return code" in plain.stdout and "OCSP Response" not in plain.stdout
            files = list((tmp_path / "data" / "ocsp").iterdir())
            assert len(files) == 1 and files[0].name.startswith("a.test-")
            assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
            assert "stapling a good response for a.test" in proc.stderr()
            # a reload's new contexts get the response kept in memory at once
            proc.signal(signal.SIGUSR1)
            wait_for(lambda: "reload: done" in proc.stderr(), "reloaded")
            assert "Cert Status: good" in s_client(port).stdout
            assert r.requests == 1
        finally:
            proc.stop()
        # a restart staples the stored response without asking the responder
        proc, port = _serve(tmp_path, crt, key)
        try:
            assert "Cert Status: good" in wait_for(lambda: _stapled(port), "stapled again")
            assert "stapling the stored good response for a.test" in proc.stderr()
            assert r.requests == 1
        finally:
            proc.stop()


@needs_stapling
def test_revoked_is_logged_loudly_and_stapled(tmp_path: Path) -> None:
    ca = make_issuer(tmp_path)
    with ocsp_responder(ca.cert, ca.key, delegate=True) as r:
        r.status = "revoked"
        crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", r.url)
        proc, port = _serve(tmp_path, crt, key)
        try:
            out = wait_for(lambda: _stapled(port), "stapled")
            assert "Cert Status: revoked" in out
            assert "Revocation Reason: keyCompromise" in out
            err = proc.stderr()
            assert "ERROR" in err and "a.test" in err and "is REVOKED" in err, err
        finally:
            proc.stop()


@needs_stapling
def test_responder_down_at_start_then_up(tmp_path: Path) -> None:
    ca = make_issuer(tmp_path)
    port_ocsp = free_port()
    crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", f"http://127.0.0.1:{port_ocsp}/")
    proc, port = _serve(tmp_path, crt, key, MESHKIT_OCSP_RETRY="1s")
    try:
        first = s_client(port)
        assert "Verify return code" in first.stdout  # served, without a staple
        assert "OCSP response: no response sent" in first.stdout
        wait_for(lambda: "no response for a.test" in proc.stderr(), "logged the failure")
        assert "retrying in 1s" in proc.stderr()
        with ocsp_responder(ca.cert, ca.key, port=port_ocsp):
            out = wait_for(lambda: _stapled(port), "stapled once the responder is up", 20)
            assert "Cert Status: good" in out
    finally:
        proc.stop()


@needs_stapling
def test_must_staple_certificate_only_served_with_a_staple(tmp_path: Path) -> None:
    ca = make_issuer(tmp_path)
    port_ocsp = free_port()
    url = f"http://127.0.0.1:{port_ocsp}/"
    crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", url, must_staple=True)
    proc, port = _serve(tmp_path, crt, key, MESHKIT_OCSP_RETRY="1s")
    try:
        # a client that asks for the status gets an alert, never the certificate alone
        refused = s_client(port)
        assert "no peer certificate available" in refused.stdout
        assert "alert internal error" in refused.stderr
        assert "must-staple: clients asking for its status are refused" in proc.stderr()
        with ocsp_responder(ca.cert, ca.key, port=port_ocsp):
            out = wait_for(lambda: _stapled(port), "stapled", 20)
            assert "Cert Status: good" in out
    finally:
        proc.stop()


# --- must_staple through ACME (pebble), and a revoked certificate renewed ---


@needs_stapling
@pytest.mark.peers
@pytest.mark.skipif(not have_pebble(), reason="pebble is not installed")
def test_must_staple_from_pebble_and_revoked_renewed(tmp_path: Path) -> None:
    """Pebble has no OCSP responder: it names ours in the AIA (ocspResponderURL), and ours
    signs with pebble's intermediate key (its management API)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    http, https, port_ocsp = free_port(), free_port(), free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("must staple\n")
    url = f"http://127.0.0.1:{port_ocsp}/"
    with run_pebble(tmp_path / "pebble", http_port=http, tls_port=https, ocsp_url=url) as ca:
        inter_pem, inter_key = ca.intermediate()
        inter = x509.load_pem_x509_certificate(inter_pem)
        key = serialization.load_pem_private_key(inter_key, None)
        with ocsp_responder(inter, key, port=port_ocsp) as r:
            # short-lived answers: refreshed every ~2 s (halfway), so a revocation shows soon
            r.lifetime, r.backdate = 4.0, 0.0
            conf = tmp_path / "Caddyfile"
            conf.write_text(f"a.test {{\n  root {www}\n  tls {{\n    must_staple\n  }}\n}}\n")
            argv = [
                sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf), "-agree",
                "-ca", ca.directory, "-http-port", str(http), "-https-port", str(https),
            ]  # fmt: skip
            env = {
                "MESHKIT_DATA": str(tmp_path / "data"),
                "MESHKIT_ACME_CA_ROOTS": str(ca.trust),
                "MESHKIT_OCSP_RETRY": "1s",
            }
            proc = Proc(argv, env)
            try:
                wait_tcp(https, proc)
                wait_for(lambda: "certificate for a.test obtained" in proc.stderr(), "issued", 60)
                out = wait_for(lambda: _stapled(https), "stapled", 30)
                assert "Cert Status: good" in out
                # what pebble issued names our responder; Debian's pebble 2.4.0 leaves the
                # CSR's TLS Feature extension out (test_csr_asks_for_must_staple checks the
                # CSR), so whether the certificate is must-staple is pebble's choice
                site = next((tmp_path / "data" / "acme").glob("*/sites/a.test"))
                leaf = x509.load_pem_x509_certificates((site / "a.test.crt").read_bytes())[0]
                assert responders(leaf) == [url]
                assert leaf.serial_number in r.served
                # the responder says revoked: logged, stapled, and the certificate renewed
                r.revoked_serials.add(leaf.serial_number)
                wait_for(lambda: "is REVOKED" in proc.stderr(), "saw the revocation", 30)
                wait_for(lambda: ca.orders() == 2, "ordered again", 60)
                assert "renewing the certificate of a.test now: it is revoked" in proc.stderr()

                def renewed() -> str:
                    out = _stapled(https)
                    return out if "Cert Status: good" in out else ""

                wait_for(renewed, "served the new certificate with a good staple", 60)

                def stored() -> x509.Certificate | None:
                    c = x509.load_pem_x509_certificates((site / "a.test.crt").read_bytes())[0]
                    return c if c.serial_number != leaf.serial_number else None

                new = wait_for(stored, "stored the new certificate")
                assert new.serial_number in r.served
            finally:
                print(proc.stderr())  # (shown when the test fails)
                proc.stop()


# --- the C callback itself, on a plain ssl.SSLContext (Python's own server socket) ---


@contextlib.contextmanager
def tls_server(ctx: ssl.SSLContext) -> Iterator[int]:
    """Python's own blocking TLS server on 127.0.0.1 (a thread) with `ctx`; its port."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                raw, _ = lsock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        lsock.shutdown(socket.SHUT_RDWR)  # (wakes the accept())
        lsock.close()
        thread.join(10)


@needs_stapling
def test_callback_staples_until_next_update_and_refuses_must_staple(tmp_path: Path) -> None:
    ca = make_issuer(tmp_path)
    crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", "http://127.0.0.1:9/")
    leaf, issuer = chain_of(crt.read_bytes())
    assert issuer is not None
    with ocsp_responder(ca.cert, ca.key) as r:
        der = r.answer(request_der(leaf, issuer))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    with tls_server(ctx) as port:
        assert staple.counts(ctx) == (0, 0, 0)
        staple.put(ctx, der, time.time() + 3600, False)
        assert "Cert Status: good" in s_client(port).stdout
        assert staple.counts(ctx) == (1, 0, 0)
        # past its nextUpdate: never stapled any more
        staple.put(ctx, der, time.time() - 1, False)
        assert "OCSP response: no response sent" in s_client(port).stdout
        assert staple.counts(ctx) == (1, 1, 0)
        # must-staple without a response: an alert, no certificate
        staple.put(ctx, b"", 0.0, True)
        refused = s_client(port)
        assert "no peer certificate available" in refused.stdout
        assert staple.counts(ctx) == (1, 1, 1)
        # a client that does not ask is not refused (it would not check the staple)
        assert "Verify return code" in s_client(port, status=False).stdout
        assert staple.counts(ctx) == (1, 1, 1)


@needs_stapling
def test_ready_fetches_before_a_must_staple_certificate_is_served(tmp_path: Path) -> None:
    """AcmeManager asks ready() before it swaps a new must-staple certificate in: the first
    handshake already gets the staple."""
    from meshkit.acme.stapler import OcspStapler

    ca = make_issuer(tmp_path)
    port_ocsp = free_port()
    url = f"http://127.0.0.1:{port_ocsp}/"
    crt, key = issue_with_aia(ca, tmp_path, "a", "a.test", url, must_staple=True)
    plain, _ = issue_with_aia(ca, tmp_path, "b", "a.test", url)
    stapler = OcspStapler(tmp_path / "data")
    try:
        assert stapler.ready(plain.read_bytes(), "test")  # not must-staple: nothing to wait for
        assert not stapler.ready(crt.read_bytes(), "test")  # the responder is down
        with ocsp_responder(ca.cert, ca.key, port=port_ocsp) as r:
            assert stapler.ready(crt.read_bytes(), "test")
            assert r.requests == 1
            assert stapler.ready(crt.read_bytes(), "test")  # (kept: not asked again)
            assert r.requests == 1
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(crt), str(key))
            stapler.watch(ctx, crt.read_bytes(), "test")
            with tls_server(ctx) as port:
                assert "Cert Status: good" in s_client(port).stdout
            assert staple.counts(ctx) == (1, 0, 0)
        assert len(list((tmp_path / "data" / "ocsp").iterdir())) == 1
    finally:
        stapler.close()


def test_sweep_deletes_expired_and_unreadable_responses(tmp_path: Path) -> None:
    from meshkit.acme.stapler import sweep

    ca, leaf, issuer = _leaf(tmp_path)
    folder = tmp_path / "ocsp"
    folder.mkdir()
    with ocsp_responder(ca.cert, ca.key) as r:
        (folder / "current").write_bytes(r.answer(request_der(leaf, issuer)))
        r.status = "error"
        (folder / "trylater").write_bytes(r.answer(request_der(leaf, issuer)))
    (folder / "garbage").write_bytes(b"not OCSP")
    (folder / "x.tmp").write_bytes(b"being written")
    assert sorted(sweep(folder)) == ["garbage", "trylater"]
    assert sorted(os.listdir(folder)) == ["current", "x.tmp"]
    assert sweep(folder, now=time.time() + 7200) == ["current"]  # (past its nextUpdate)
    assert sweep(tmp_path / "none") == []
