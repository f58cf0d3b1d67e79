"""The proxy options Caddy v1 grew late (issue 22), end to end: real backends (meshkit
servers that echo what they got, a TLS backend with a certificate from a test CA), curl as the
client, and for SRV locators a real `meshkit web` process whose /etc/resolv.conf names a
dnspython responder the test runs (a private mount namespace: the machine's is untouched)."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.message import HandlerResult, Headers, Request, Response
from meshkit.web.proxy.dial import SrvRecord, _race, srv_order
from meshkit.web.proxy.headerops import go_expand
from support.dnsresponder import dns_responder, resolv_argv
from support.e2e_util import Running, curl
from support.peers import Proc, free_port, wait_tcp
from support.polling import wait_until
from support.tlscerts import issue, make_ca
from support.webproxy import _close, _proxy

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


class _Echo:
    """A backend answering each request with what it saw (one `k=v` per line), and keeping
    the heads it got (health probes included)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.running = Running(self.handle)
        self.port = self.running.port

    def handle(self, request: Request) -> HandlerResult:
        fields = {k.lower(): v for k, v in request.headers}
        self.seen.append((request.uri, fields))
        lines = [f"backend={self.name}", f"uri={request.uri}"]
        lines += [f"{k}={v}" for k, v in fields.items()]
        headers = Headers([("X-Backend", self.name), ("X-Version", "v1.2.3")])
        return Response(200, headers, ("\n".join(lines) + "\n").encode())


@pytest.fixture
def echo() -> Iterator[_Echo]:
    e = _Echo("b0")
    try:
        yield e
    finally:
        e.running.close()


@pytest.fixture
def make_proxy() -> Iterator[object]:
    made: list[Running] = []

    def make(text: str) -> Running:
        r = _proxy(text)
        made.append(r)
        return r

    yield make
    for r in made:
        _close(r)


def _fields(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.decode().splitlines():
        k, _, v = line.partition("=")
        out.setdefault(k, v)
    return out


# --- header_upstream / header_downstream ------------------------------------------------------


def test_three_argument_header_replacements(echo, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(
        f""":2015
proxy / 127.0.0.1:{echo.port} {{
    header_upstream X-Token "^abc(\\d+)$" "n=$1 ($1x) {{method}}"
    header_upstream X-Absent "x" "y"
    header_upstream -X-Drop anything
    header_downstream X-Version "^v(\\d+)\\.(\\d+).*" "major $1, minor $2"
    header_downstream X-From {{<X-Backend}}-{{method}}
    header_downstream +X-Empty {{<X-Nothing}}
}}
"""
    )
    r = curl(p.port, "/x", "-H", "X-Token: abc42", "-H", "X-Drop: 1", tmp=tmp_path)
    assert r.status == 200
    f = _fields(r.body)
    # `$1x` is the group named `1x` (Go); `{...}` are placeholders, so Go's `${1}` is not
    # written in a Caddyfile (v1 rendered it as `$`, as here)
    assert f["x-token"] == "n=42 () GET"
    assert "x-absent" not in f and "x-drop" not in f
    assert r.headers["x-version"] == "major 1, minor 2"
    assert r.headers["x-from"] == "b0-GET"
    assert "x-empty" not in r.headers  # a value rendering to nothing is not added (v1)


def test_go_expand_follows_go_regexp_expand() -> None:
    import re

    m = re.match(r"(?P<word>[a-z]+)(\d+)", "abc123")
    assert m is not None
    assert go_expand("$1-${2}-$word-$$-$9-$1x", m) == "abc-123-abc-$--"


# --- upstream base paths ----------------------------------------------------------------------


def test_upstream_base_path_and_query(echo, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(
        f""":2015
proxy /api http://127.0.0.1:{echo.port}/base?k=v {{
    without /api
}}
proxy /plain 127.0.0.1:{echo.port}/root/
"""
    )
    assert _fields(curl(p.port, "/api/x/y?q=1", tmp=tmp_path).body)["uri"] == "/base/x/y?k=v&q=1"
    assert _fields(curl(p.port, "/api", tmp=tmp_path).body)["uri"] == "/base/?k=v"
    assert _fields(curl(p.port, "/plain/z", tmp=tmp_path).body)["uri"] == "/root/plain/z"


# --- websocket as a switch --------------------------------------------------------------------


def test_upgrade_passes_only_with_websocket(echo, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(f":2015\nproxy / 127.0.0.1:{echo.port}\n")
    r = curl(p.port, "/ws", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", tmp=tmp_path)
    assert r.status == 200  # an ordinary exchange: v1 drops Connection and Upgrade
    f = _fields(r.body)
    assert "upgrade" not in f and f.get("connection", "") != "Upgrade"


def _upgrading_backend() -> tuple[socket.socket, threading.Thread]:
    """A backend that switches protocols and then echoes in upper case."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(4096)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
            )
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return lsock, thread


def test_upgrade_rules_written_out_act_as_websocket(make_proxy) -> None:  # type: ignore[no-untyped-def]
    """v1's `websocket` is two header_upstream rules; a block that writes them itself upgrades."""
    lsock, thread = _upgrading_backend()
    try:
        p = make_proxy(
            f":2015\nproxy / 127.0.0.1:{lsock.getsockname()[1]} {{\n"
            " header_upstream Connection {>Connection}\n header_upstream Upgrade {>Upgrade}\n}\n"
        )
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
            c.sendall(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
            c.sendall(b"hello")
            got = b""
            while len(got) < 5:
                got += c.recv(100)
            assert got == b"HELLO"
    finally:
        lsock.close()
        thread.join(5)


# --- health checks ----------------------------------------------------------------------------


def test_health_probe_sends_host_and_header_upstream(echo, make_proxy) -> None:  # type: ignore[no-untyped-def]
    make_proxy(
        f"""site.test:2015
proxy / http://127.0.0.1:{echo.port}/base {{
    health_check /healthz
    health_check_interval 1h
    header_upstream Host {{host}}
    header_upstream X-Api-Key secret
    header_upstream X-Client {{remote}}
}}
"""
    )
    wait_until(lambda: any(uri.endswith("/healthz") for uri, _ in echo.seen), timeout=10)
    uri, fields = next(s for s in echo.seen if s[0].endswith("/healthz"))
    assert uri == "/base/healthz"
    assert fields["host"] == "site.test"
    assert fields["x-api-key"] == "secret"
    assert "x-client" not in fields  # needs a request: a probe has none


# --- ca_certificates --------------------------------------------------------------------------


class _TLSHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"tls backend saw {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca = make_ca(tmp_path, "proxy test CA")
    cert, key = issue(ca, tmp_path, "backend", ["127.0.0.1", "b1.srv.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TLSHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_ca_certificates_trusts_only_those(tls_backend, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, ca = tls_backend
    p = make_proxy(
        f""":2015
proxy /trusted https://127.0.0.1:{port} {{
    ca_certificates {ca} {ca}
}}
proxy /system https://127.0.0.1:{port}
"""
    )
    r = curl(p.port, "/trusted/a", tmp=tmp_path)
    assert (r.status, r.body) == (200, b"tls backend saw /trusted/a\n")
    assert curl(p.port, "/system/a", tmp=tmp_path).status == 502  # not a system CA


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ("ca_certificates", "wrong argument count"),
        ("ca_certificates /nonexistent/ca.pem", "cannot read '/nonexistent/ca.pem'"),
        ("ca_certificates {junk}", "no certificates were successfully parsed"),
        ("ca_certificates {ca}\n insecure_skip_verify", "both insecure_skip_verify and ca_cert"),
        ("insecure_skip_verify\n ca_certificates {ca}", "both insecure_skip_verify and ca_cert"),
    ],
)
def test_ca_certificates_errors(tmp_path: Path, block: str, words: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    ca = make_ca(tmp_path).path
    text = f":2015\nproxy / https://127.0.0.1:1 {{\n {block.format(junk=junk, ca=ca)}\n}}\n"
    errors = [str(e) for e in load_text(text).errors]
    assert len(errors) == 1 and words in errors[0], errors
    assert errors[0].startswith("Caddyfile:3 - ") or errors[0].startswith("Caddyfile:4 - ")


# --- parse errors of the new forms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("proxy / srv://_a._tcp.x.test:80", "can not have port specified"),
        ("proxy / srv://_a._tcp.x.test 127.0.0.1:1", "only one upstream is supported"),
        ("proxy / 127.0.0.1:1 srv://_a._tcp.x.test", "can not be mixed with host names"),
        ("proxy / srv://_a._tcp.x.test {\n upstream 127.0.0.1:1\n}", "upstream directive is not"),
        ("proxy / srv://_a._tcp.x.test {\n health_check_port 80\n}", "health_check_port direct"),
        ("proxy / 127.0.0.1:1 {\n header_upstream +X a b\n}", "cannot add or remove"),
        ("proxy / 127.0.0.1:1 {\n header_downstream X ( b\n}", "invalid regular expression"),
        ("proxy / 127.0.0.1:1 {\n header_upstream X\n}", "wrong argument count"),
        ("proxy / 127.0.0.1:1 {\n upstream 127.0.0.1:2 127.0.0.1:3\n}", "unknown proxy property"),
        ("proxy / 127.0.0.1:1 {\n fallback_delay soon\n}", "soon"),
        ("proxy / 127.0.0.1:1 {\n proxy_header X y\n}", "renamed header_upstream"),
        ('proxy / "http://127.0.0.1:1/a#frag"', "fragment"),
    ],
)
def test_new_forms_rejected(body: str, words: str) -> None:
    errors = [str(e) for e in load_text(f":2015\n{body}\n").errors]
    assert len(errors) == 1 and words in errors[0], errors
    assert errors[0].startswith("Caddyfile:")


def test_new_forms_parsed() -> None:
    cfg = load_text(
        ":2015\nproxy / srv+https://_web._tcp.Example.test {\n fallback_delay -1s\n"
        " header_upstream -X-A gone\n}\nproxy /b http://h:81/base/?a=1\n"
    )
    assert not cfg.errors, cfg.errors
    a, b = cfg.sites[0].directives["proxy"].rules
    assert a.upstreams[0].name == "srv+https://_web._tcp.example.test"
    assert a.upstreams[0].host_header == "_web._tcp.example.test"
    assert a.fallback_delay == -1.0
    assert [(h.op, h.name) for h in a.header_upstream] == [("del", "X-A")]
    assert (b.upstreams[0].base, b.upstreams[0].query) == ("/base/", "a=1")


# --- fallback_delay: the race between two address families ------------------------------------


def test_race_starts_the_fallback_after_the_delay() -> None:
    async def main() -> tuple[object, float]:
        loop = asyncio.get_running_loop()
        hung = loop.create_future()  # a first family that never answers (a dropped SYN)

        async def first() -> object:
            return await hung

        async def second() -> object:
            return "second"

        start = loop.time()
        won = await _race(first(), second, 0.05)
        return won, loop.time() - start

    won, took = asyncio.run(main())
    assert won == "second" and took >= 0.05


def test_srv_order_is_priority_then_weight() -> None:
    import random

    recs = [SrvRecord(20, 0, "c", 3), SrvRecord(10, 1, "a", 1), SrvRecord(10, 1000, "b", 2)]
    firsts = [srv_order(recs, random.Random(seed))[0].target for seed in range(200)]
    assert set(firsts) <= {"a", "b"} and firsts.count("b") > 150
    assert all(srv_order(recs, random.Random(s))[2].target == "c" for s in range(20))


# --- srv:// upstreams, through a real resolver configuration -----------------------------------


needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")


@needs_unshare
@pytest.mark.root
def test_srv_upstream_follows_the_records(tmp_path: Path, tls_backend) -> None:  # type: ignore[no-untyped-def]
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (a private mount namespace)")
    b1, b2 = _Echo("b1"), _Echo("b2")
    try:
        with dns_responder() as dns:
            name = "_web._tcp.srv.test"
            closed = free_port()  # a target nobody listens on: the next one is tried
            dns.srv[name] = [(5, 0, "gone.srv.test", closed), (10, 0, "b1.srv.test", b1.port)]
            dns.a.update({"gone.srv.test": ["127.0.0.1"], "b1.srv.test": ["127.0.0.1"]})
            dns.a["b2.srv.test"] = ["127.0.0.1"]
            port = free_port()
            conf = tmp_path / "Caddyfile"
            tls_port, ca = tls_backend
            dns.srv["_tls._tcp.srv.test"] = [(1, 1, "b1.srv.test", tls_port)]
            # health checks probe every target (v1): the locator is up while one is
            dns.srv["_hc._tcp.srv.test"] = [
                (1, 0, "gone.srv.test", closed),
                (2, 0, "b2.srv.test", b2.port),
            ]
            conf.write_text(
                f"127.0.0.1:{port} {{\n proxy / srv://{name} {{\n  keepalive 0\n }}\n"
                f" proxy /tls srv+https://_tls._tcp.srv.test {{\n  ca_certificates {ca}\n }}\n"
                " proxy /hc srv://_hc._tcp.srv.test {\n  health_check /health\n"
                "  health_check_interval 1h\n }\n}\n"
            )
            argv = [sys.executable, "-m", "meshkit", "web", "-conf", str(conf)]
            proc = Proc(resolv_argv(dns, tmp_path, argv))
            try:
                wait_tcp(port, proc)
                r = curl(port, "/one", tmp=tmp_path)
                assert r.status == 200, proc.stderr()
                f = _fields(r.body)
                assert f["backend"] == "b1"
                assert f["host"] == name  # v1 sends the locator's name
                # srv+https: TLS to the target, its certificate checked against the target's
                # name (b1.srv.test) and the block's own CA
                r = curl(port, "/tls/x", tmp=tmp_path)
                assert (r.status, r.body) == (200, b"tls backend saw /tls/x\n"), proc.stderr()
                assert wait_until(lambda: any(u == "/health" for u, _ in b2.seen), 10), (
                    proc.stderr()
                )
                r = curl(port, "/hc/y", tmp=tmp_path)
                assert (r.status, _fields(r.body)["backend"]) == (200, "b2"), proc.stderr()
                # the records change: seen once their TTL (1 s) has run out
                dns.srv[name] = [(10, 0, "b2.srv.test", b2.port)]
                deadline = time.monotonic() + 15
                backend = "b1"
                while backend != "b2" and time.monotonic() < deadline:
                    time.sleep(0.3)
                    backend = _fields(curl(port, "/two", tmp=tmp_path).body).get("backend", "")
                assert backend == "b2", proc.stderr()
                asked = dns.count(name, "SRV")
                # a burst within one TTL asks once
                for _ in range(5):
                    assert curl(port, "/three", tmp=tmp_path).status == 200
                assert dns.count(name, "SRV") <= asked + 1
                # no records: 502, the reason in the log
                del dns.srv[name]
                deadline = time.monotonic() + 15
                status = 200
                while status != 502 and time.monotonic() < deadline:
                    time.sleep(0.3)
                    status = curl(port, "/four", tmp=tmp_path).status
                assert status == 502
                assert "NXDOMAIN" in proc.stderr() or "no SRV records" in proc.stderr()
            finally:
                proc.stop()
    finally:
        b1.running.close()
        b2.running.close()
