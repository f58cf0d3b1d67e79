"""On-demand TLS (`tls { max_certs N; ask URL }`) end to end with Debian's pebble: a
handshake for a name the `*.a.test` site covers waits while its certificate is obtained; `ask`
refusing and `max_certs` reached leave the name without one (a TLS alert), and the log says
why."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import Defaults, load_text
from meshkit.web.tlssock import client_hello_sni
from support.pebble import Pebble, have_pebble, run_pebble
from support.peers import Proc, free_port, wait_tcp


def test_parse_on_demand() -> None:
    on = Defaults(auto_https=True, http_port=8080, https_port=8443)
    c = load_text(
        "*.a.test {\n tls {\n  max_certs 3\n  ask http://127.0.0.1:9/ask\n }\n}\n", defaults=on
    )
    assert not c.errors, c.errors
    tls = c.sites[0].directives["tls"]
    assert (tls.on_demand, tls.max_certs, tls.ask, tls.acme) == (
        True, 3, "http://127.0.0.1:9/ask", True,
    )  # fmt: skip
    for bad, needle in (
        ("max_certs 0", "must be a whole number above 0"),
        ("ask ftp://x", "expected a URL"),
        ("dns cloudflare", "dns is not available yet"),
        ("max_certs 2\n }\n tls self_signed {\n  ask http://x/", "but this tls names its"),
    ):
        text = f":8443 {{\n tls {{\n  {bad}\n }}\n}}\n"
        errors = [str(e) for e in load_text(text, defaults=on).errors]
        assert any(needle in e for e in errors), errors


def test_client_hello_sni() -> None:
    import ssl

    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="x.a.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert client_hello_sni(hello) == "x.a.test"
    assert client_hello_sni(hello[:40]) is None  # not whole yet
    assert client_hello_sni(b"GET / HTTP/1.1\r\n\r\n") == ""
    assert client_hello_sni(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == ""


class _Ask(http.server.BaseHTTPRequestHandler):
    allowed = {"x.a.test", "y.a.test", "z.a.test"}

    def do_GET(self) -> None:
        name = self.path.partition("domain=")[2]
        self.send_response(200 if name in self.allowed else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ask() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ask)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.peers
@pytest.mark.skipif(not have_pebble(), reason="pebble is not installed")
def test_on_demand_with_pebble(tmp_path: Path, ask: int) -> None:
    http_port, https_port = free_port(), free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("on demand\n")
    with run_pebble(tmp_path / "pebble", http_port=http_port, tls_port=https_port) as ca:
        _run(tmp_path, ca, www, ask, http_port, https_port)


def _run(tmp: Path, ca: Pebble, www: Path, ask: int, http_port: int, https_port: int) -> None:
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"*.a.test {{\n root {www}\n tls {{\n  max_certs 2\n"
        f"  ask http://127.0.0.1:{ask}/check\n }}\n}}\n"
    )
    argv = [
        sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf), "-agree",
        "-ca", ca.directory, "-http-port", str(http_port), "-https-port", str(https_port),
    ]  # fmt: skip
    proc = Proc(argv, {"MESHKIT_DATA": str(tmp / "data"), "MESHKIT_ACME_CA_ROOTS": str(ca.trust)})
    root = ca.root(tmp / "root.pem")

    def get(name: str) -> subprocess.CompletedProcess[str]:
        cmd = ["curl", "-sS", "--max-time", "60", "--resolve", f"{name}:{https_port}:127.0.0.1",
               "--cacert", str(root), f"https://{name}:{https_port}/"]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)

    try:
        wait_tcp(https_port, proc)
        assert get("w.a.test").returncode != 0  # ask says no
        assert "w.a.test: http://127.0.0.1" in proc.stderr()
        assert "answered status 403" in proc.stderr()
        for name in ("x.a.test", "y.a.test"):
            r = get(name)
            assert r.returncode == 0 and r.stdout == "on demand\n", (r.stderr, proc.stderr())
        assert get("x.a.test").stdout == "on demand\n"  # served from then on
        assert get("z.a.test").returncode != 0  # ask agrees, but max_certs 2 is reached
        assert "max_certs 2 reached" in proc.stderr()
        assert get("b.c.a.test").returncode != 0  # not covered by *.a.test
        assert ca.orders() == 2
    finally:
        proc.stop()
