"""`meshkit web` over HTTPS with real clients: curl (--cacert, --resolve), openssl s_client
and raw sockets against a `python -m meshkit web` process, on 127.0.0.1 only.

Certificates come from a test CA (support.tlscerts). The serving tests run over both send
paths (`fastpath_env`: the compiled one and its pure-Python twin)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import CA, issue, make_ca

HINT = b"Client sent an HTTP request to an HTTPS server."


@dataclass
class Certs:
    ca: CA
    a: tuple[Path, Path]  # a.test
    b: tuple[Path, Path]  # b.test
    client: tuple[Path, Path]
    other_key: Path  # a key of no certificate above


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    tmp = tmp_path_factory.mktemp("certs")
    ca = make_ca(tmp)
    a = issue(ca, tmp, "a", ["a.test", "127.0.0.1"])
    b = issue(ca, tmp, "b", ["b.test", "*.b.test"])
    client = issue(ca, tmp, "client", ["client.test"], client=True)
    other = issue(ca, tmp, "other", ["other.test"])
    return Certs(ca, a, b, client, other[1])


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    return root


def serve(
    tmp: Path, text: str, env: dict[str, str] | None = None, *flags: str, wait: int = 0
) -> Proc:
    conf = tmp / "Caddyfile"
    conf.write_text(text)
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf), *flags], env)
    for port in [wait] if wait else []:
        wait_tcp(port, proc)
    return proc


def curl(
    url: str, *args: str, resolve: tuple[str, int] | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "-sS", "--http1.1", "--max-time", "20"]
    if resolve:
        cmd += ["--resolve", f"{resolve[0]}:{resolve[1]}:127.0.0.1"]
    return subprocess.run([*cmd, *args, url], capture_output=True, timeout=30)


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"proto={self.headers.get('X-Forwarded-Proto')} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


# --- serving ---------------------------------------------------------------------------------


def test_cert_key_static_file_big_file_and_proxy(
    tmp_path: Path, www: Path, certs: Certs, backend: int, fastpath_env: dict[str, str]
) -> None:
    port = free_port()
    crt, key = certs.a
    proc = serve(
        tmp_path,
        f"https://a.test:{port} {{\n  root {www}\n  tls {crt} {key}\n"
        f"  proxy /api 127.0.0.1:{backend} {{\n    transparent\n  }}\n}}\n",
        fastpath_env,
        wait=port,
    )
    try:
        ca = ["--cacert", str(certs.ca.path)]
        url = f"https://a.test:{port}"
        # two requests on one kept-alive connection, then the big file
        r = curl(
            f"{url}/", *ca, "-o", "/dev/null", "--next", *ca, f"{url}/?x", resolve=("a.test", port)
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"hello\n"
        r = curl(f"{url}/big.bin", *ca, resolve=("a.test", port))
        assert r.returncode == 0, r.stderr
        digest = hashlib.sha256((www / "big.bin").read_bytes()).hexdigest()
        assert hashlib.sha256(r.stdout).hexdigest() == digest
        r = curl(f"{url}/api/x?y=1", *ca, resolve=("a.test", port))
        assert (r.returncode, r.stdout) == (0, b"proto=https path=/api/x?y=1\n"), r.stderr
        # a range of the big file (the file path under TLS reads pieces at an offset)
        r = curl(f"{url}/big.bin", *ca, "-r", "70000-200000", resolve=("a.test", port))
        assert r.stdout == (www / "big.bin").read_bytes()[70000:200001]
    finally:
        proc.stop()


def test_sni_picks_the_certificate_and_unknown_names_get_the_default(
    tmp_path: Path, www: Path, certs: Certs, fastpath_env: dict[str, str]
) -> None:
    port = free_port()
    (www / "b").mkdir()
    (www / "b" / "index.html").write_bytes(b"bee\n")
    proc = serve(
        tmp_path,
        f"https://a.test:{port} {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]}\n}}\n"
        f"https://b.test:{port}, https://*.b.test:{port} {{\n  root {www / 'b'}\n"
        f"  tls {certs.b[0]} {certs.b[1]}\n}}\n",
        fastpath_env,
        wait=port,
    )
    try:
        ca = ["--cacert", str(certs.ca.path)]
        for host, body in (("a.test", b"hello\n"), ("b.test", b"bee\n"), ("x.b.test", b"bee\n")):
            r = curl(f"https://{host}:{port}/", *ca, resolve=(host, port))
            assert (r.returncode, r.stdout) == (0, body), (host, r.stderr)
        # an unknown name (and no name at all) get the first site's certificate
        for args in (["-servername", "zzz.test"], ["-noservername"]):
            out = s_client(port, *args).stdout
            assert "subject=CN = a.test" in out, out
        # the Host header still picks the site: an unknown host is 404, not another site
        r = curl(
            f"https://a.test:{port}/",
            *ca,
            "-H",
            "Host: c.test",
            "-w",
            "%{http_code}",
            resolve=("a.test", port),
        )
        assert r.stdout.endswith(b"404"), r
    finally:
        proc.stop()


def test_self_signed(tmp_path: Path, www: Path) -> None:
    port = free_port()
    proc = serve(
        tmp_path,
        f"https://self.test:{port} {{\n  root {www}\n  tls self_signed\n}}\n",
        wait=port,
    )
    try:
        r = curl(f"https://self.test:{port}/", "-k", resolve=("self.test", port))
        assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr
        # not trusted without -k
        assert curl(f"https://self.test:{port}/", resolve=("self.test", port)).returncode != 0
        out = s_client(port, "-servername", "self.test").stdout
        assert "CN = self.test" in out and "meshkit self-signed" in out
    finally:
        proc.stop()


def test_http_to_https_redirect(tmp_path: Path, www: Path, certs: Certs) -> None:
    https, http = free_port(), free_port()
    proc = serve(
        tmp_path,
        f"https://a.test {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]}\n}}\n",
        None,
        "-https-port",
        str(https),
        "-http-port",
        str(http),
        wait=https,
    )
    try:
        wait_tcp(http, proc)
        r = curl(
            f"http://a.test:{http}/x/y?q=1&r=2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            resolve=("a.test", http),
        )
        assert r.stdout.decode() == f"301 https://a.test:{https}/x/y?q=1&r=2", r
        # following it lands on the site
        r = curl(
            f"http://a.test:{http}/",
            "-L",
            "--cacert",
            str(certs.ca.path),
            "--resolve",
            f"a.test:{https}:127.0.0.1",
            resolve=("a.test", http),
        )
        assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr
    finally:
        proc.stop()


def test_no_redirect_site_when_the_http_port_has_the_host(
    tmp_path: Path, www: Path, certs: Certs
) -> None:
    https, http = free_port(), free_port()
    proc = serve(
        tmp_path,
        f"https://a.test {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]}\n}}\n"
        f"http://a.test {{\n  root {www}\n}}\n",
        None,
        "-https-port",
        str(https),
        "-http-port",
        str(http),
        wait=https,
    )
    try:
        wait_tcp(http, proc)
        r = curl(f"http://a.test:{http}/", resolve=("a.test", http))
        assert r.stdout == b"hello\n"
    finally:
        proc.stop()


# --- bad clients -----------------------------------------------------------------------------


@pytest.fixture
def https_site(tmp_path: Path, www: Path, certs: Certs) -> Iterator[int]:
    port = free_port()
    proc = serve(
        tmp_path,
        f"127.0.0.1:{port} {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]}\n}}\n",
        wait=port,
    )
    yield port
    proc.stop()


def _get_ok(port: int, certs: Certs) -> None:
    """A well-behaved client is served (the certificate of a.test also names 127.0.0.1)."""
    r = curl(f"https://127.0.0.1:{port}/", "--cacert", str(certs.ca.path), "--max-time", "5")
    assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr


def test_plain_http_to_the_https_port_gets_400(https_site: int) -> None:
    with socket.create_connection(("127.0.0.1", https_site), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.0 400 Bad Request\r\n") and HINT in data


def test_garbage_instead_of_a_client_hello(https_site: int, certs: Certs) -> None:
    with socket.create_connection(("127.0.0.1", https_site), timeout=10) as s:
        s.sendall(os.urandom(64) + b"\x16\x03\x01\xff\xff" + b"\x00" * 300)
        _get_ok(https_site, certs)
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass  # closed: either way it did not stay open
    _get_ok(https_site, certs)


def _client_hello() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing, outgoing.read()


def test_client_hello_in_one_byte_writes_then_a_request(https_site: int, certs: Certs) -> None:
    obj, incoming, outgoing, hello = _client_hello()
    with socket.create_connection(("127.0.0.1", https_site), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, byte in enumerate(hello):
            s.send(bytes([byte]))
            if i == len(hello) // 2:
                _get_ok(https_site, certs)  # another client is served meanwhile
            time.sleep(0.001)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                data = s.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        obj.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        s.sendall(outgoing.read())
        plain = b""
        while True:
            try:
                chunk = obj.read(65536)
                if not chunk:
                    break  # close_notify
                plain += chunk
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        assert plain.startswith(b"HTTP/1.1 200 ") and plain.endswith(b"hello\n"), plain[:200]


def test_stalled_handshake_is_closed_and_blocks_nobody(https_site: int, certs: Certs) -> None:
    _, _, _, hello = _client_hello()
    with socket.create_connection(("127.0.0.1", https_site), timeout=30) as s:
        s.sendall(hello[: len(hello) // 2])
        start = time.monotonic()
        _get_ok(https_site, certs)
        assert s.recv(4096) == b""  # closed by the server: the handshake timeout (10 s)
        assert time.monotonic() - start < 20


# --- options ---------------------------------------------------------------------------------


def test_protocols_tls13_refuses_a_tls12_client(tmp_path: Path, www: Path, certs: Certs) -> None:
    port = free_port()
    proc = serve(
        tmp_path,
        f"127.0.0.1:{port} {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]} {{\n"
        "    protocols tls1.3\n  }\n}\n",
        wait=port,
    )
    try:
        old = s_client(port, "-tls1_2")
        assert "Cipher is (NONE)" in old.stdout or old.returncode != 0, old.stdout
        new = s_client(port, "-tls1_3")
        assert "Protocol  : TLSv1.3" in new.stdout or "TLSv1.3" in new.stdout, new.stdout
        r = curl(f"https://a.test:{port}/", "-k", "--tls-max", "1.2", resolve=("a.test", port))
        assert r.returncode != 0
    finally:
        proc.stop()


def test_clients_require(tmp_path: Path, www: Path, certs: Certs) -> None:
    port = free_port()
    proc = serve(
        tmp_path,
        f"127.0.0.1:{port} {{\n  root {www}\n  tls {certs.a[0]} {certs.a[1]} {{\n"
        f"    clients require {certs.ca.path}\n  }}\n}}\n",
        wait=port,
    )
    try:
        ca = ["--cacert", str(certs.ca.path)]
        r = curl(f"https://127.0.0.1:{port}/", *ca)
        assert r.returncode != 0 and r.stdout == b""
        r = curl(
            f"https://127.0.0.1:{port}/",
            *ca,
            "--cert",
            str(certs.client[0]),
            "--key",
            str(certs.client[1]),
            resolve=("a.test", port),
        )
        assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr
    finally:
        proc.stop()


def test_alpn_offers_h2_then_http11(https_site: int) -> None:
    for offer, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(offer)
        with (
            socket.create_connection(("127.0.0.1", https_site), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="a.test") as tls,
        ):
            assert tls.selected_alpn_protocol() == chosen


# --- validation ------------------------------------------------------------------------------


def _validate(tmp: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    conf = tmp / "Caddyfile"
    conf.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-validate", "-conf", str(conf), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_names_a_missing_file_and_a_mismatched_key(tmp_path: Path, certs: Certs) -> None:
    r = _validate(
        tmp_path, f"https://a.test:8443 {{\n  root .\n  tls /nope/a.crt {certs.a[1]}\n}}\n"
    )
    assert r.returncode == 1
    conf = tmp_path / "Caddyfile"
    assert f"{conf}:3 - tls: certificate file '/nope/a.crt' does not exist" in r.stderr, r.stderr
    r = _validate(tmp_path, f"https://a.test:8443 {{\n  tls {certs.a[0]} {certs.other_key}\n}}\n")
    assert r.returncode == 1
    assert (
        f"{conf}:2 - tls: the key '{certs.other_key}' does not match the certificate "
        f"'{certs.a[0]}'" in r.stderr
    ), r.stderr


@pytest.mark.parametrize(
    "tls",
    [
        "tls {\n    dns cloudflare\n  }",
        "tls {\n    wildcard\n  }",
    ],
)
def test_acme_options_not_there_yet_are_refused(tmp_path: Path, tls: str) -> None:
    r = _validate(tmp_path, f"https://a.test:8443 {{\n  {tls}\n}}\n")
    assert r.returncode == 1
    assert "is not available yet (automatic HTTPS has HTTP-01 and TLS-ALPN-01 only)" in r.stderr
    assert f"{tmp_path / 'Caddyfile'}:" in r.stderr


def test_tls_email_asks_for_automatic_https(tmp_path: Path) -> None:
    r = _validate(
        tmp_path, "a.test {\n  tls admin@a.test {\n    ca https://acme.test/dir\n  }\n}\n"
    )
    assert (r.returncode, r.stdout) == (0, "Caddyfile is valid\n"), r.stderr
    assert "Warning" not in r.stderr


def test_tls_without_a_certificate_needs_agree_or_an_email(tmp_path: Path) -> None:
    r = _validate(tmp_path, "a.test {\n  tls {\n    ca https://acme.test/dir\n  }\n}\n")
    assert r.returncode == 1
    assert "asks for automatic HTTPS, which is not on: give -agree" in r.stderr
    r = _validate(tmp_path, "localhost {\n  tls admin@a.test\n}\n")
    assert r.returncode == 1
    assert "automatic HTTPS gets certificates for host names only" in r.stderr


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("protocols tls1.0", "tls1.0 is not offered"),
        ("ciphers ECDHE-RSA-NOPE", "unknown cipher 'ECDHE-RSA-NOPE'"),
        ("curves x25519 p256", "sets one curve only"),
        ("key_type ed448", "unknown key_type 'ed448'"),
        ("clients require /nope/ca.pem", "client CA file '/nope/ca.pem' does not exist"),
        ("load /nope", "load folder '/nope' does not exist"),
    ],
)
def test_bad_tls_options(tmp_path: Path, block: str, message: str) -> None:
    r = _validate(
        tmp_path, f"https://a.test:8443 {{\n  tls self_signed {{\n    {block}\n  }}\n}}\n"
    )
    assert r.returncode == 1 and "Caddyfile:3 - tls: " in r.stderr and message in r.stderr, r.stderr


def test_good_tls_options_and_load(tmp_path: Path, certs: Certs) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "b.pem").write_bytes(certs.b[0].read_bytes() + certs.b[1].read_bytes())
    r = _validate(
        tmp_path,
        "https://b.test:8443 {\n  tls {\n    protocols tls1.2 tls1.3\n"
        "    ciphers ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-ECDSA-WITH-CHACHA20-POLY1305\n"
        f"    curves p256\n    alpn http/1.1\n    load {folder}\n"
        f"    clients verify_if_given {certs.ca.path}\n  }}\n}}\n",
    )
    assert (r.returncode, r.stdout) == (0, "Caddyfile is valid\n"), r.stderr


def test_a_bare_hostname_warns_that_it_stays_plain_http(tmp_path: Path) -> None:
    r = _validate(tmp_path, "example.test {\n  root .\n}\n")
    assert r.returncode == 0
    warnings = [line for line in r.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and "automatic HTTPS (ACME) is not on" in warnings[0]
    assert "plain HTTP on port 2015" in warnings[0] and "give -agree" in warnings[0]


def test_sites_of_one_port_must_agree(tmp_path: Path) -> None:
    r = _validate(
        tmp_path,
        "https://a.test:8443 {\n  tls self_signed\n}\n"
        "https://b.test:8443 {\n  tls self_signed {\n    protocols tls1.3\n  }\n}\n"
        "c.test:8443 {\n  tls off\n}\n",
    )
    assert r.returncode == 1
    assert "differ from those of the site at" in r.stderr
    assert "port 8443 is plain HTTP here but HTTPS" in r.stderr


def test_agree_turns_automatic_https_on_for_host_names_only(tmp_path: Path) -> None:
    text = "a.test {\n  root .\n}\nlocalhost {\n  root .\n}\nhttp://b.test {\n  root .\n}\n"
    r = _validate(tmp_path, text, "-agree", "-json", "-https-port", "8443")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr
    sites = json.loads(r.stdout)
    addrs = [(a["scheme"], a["host"], a["port"]) for s in sites for a in s["addresses"]]
    assert addrs == [("https", "a.test", 8443), ("http", "localhost", 2015), ("http", "b.test", 80)]
    assert sites[0]["directives"]["tls"]["acme"] is True
    assert "tls" not in sites[1]["directives"]
