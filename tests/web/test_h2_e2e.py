"""`meshkit web` over HTTP/2 (h2 by ALPN) with real clients: curl --http2, h2load (nghttp2)
and the `h2` library itself as a client over ssl (for what curl cannot do: many streams on
purpose, resets in a loop, SETTINGS floods), against a `python -m meshkit web` process on
127.0.0.1 only. Certificates come from a test CA (support.tlscerts)."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import CA, issue, make_ca
from web.h2engines import h2_engine  # noqa: F401  (the fixture: each test runs per engine)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path, Path]:
    tmp = tmp_path_factory.mktemp("certs")
    ca = make_ca(tmp)
    crt, key = issue(ca, tmp, "a", ["a.test", "127.0.0.1"])
    return ca, crt, key


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    (root / "page.txt").write_bytes(b"some text that compresses " * 400)
    secret = root / "secret"
    secret.mkdir()
    (secret / "s.txt").write_bytes(b"top secret\n")
    return root


def serve(tmp: Path, text: str, *flags: str, port: int) -> Proc:
    conf = tmp / "Caddyfile"
    conf.write_text(text)
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf), *flags])
    wait_tcp(port, proc)
    return proc


def site(
    port: int, certs: tuple[CA, Path, Path], www: Path, extra: str = "", host: str = "a.test"
) -> str:
    _, crt, key = certs
    return f"https://{host}:{port} {{\n  root {www}\n  tls {crt} {key}\n{extra}}}\n"


def curl(port: int, ca: CA, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "-sS", "--max-time", "20", "--cacert", str(ca.path)]
    cmd += ["--resolve", f"a.test:{port}:127.0.0.1"]
    return subprocess.run(
        [*cmd, *args, f"https://a.test:{port}{path}"], capture_output=True, timeout=30
    )


class Client:
    """A blocking HTTP/2 client: the h2 library over an ssl socket."""

    def __init__(self, port: int, ca: CA) -> None:
        ctx = ssl.create_default_context(cafile=str(ca.path))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="a.test")
        assert self.sock.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()
        self.events: list[Any] = []
        self.eof = False
        # GOAWAY frames (last stream id, error code), kept from the h2 library when
        # strip_goaway is set: as a client it accepts nothing after a GOAWAY, though the
        # server may still finish the streams below its last stream id (RFC 9113 6.8)
        self.goaways: list[tuple[int, int]] = []
        self.strip_goaway = False
        self._frames = b""

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", extra: list[tuple[str, str]] | None = None,
                end: bool = True) -> int:  # fmt: skip
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "https"),
                   (":authority", "a.test"), *(extra or [])]  # fmt: skip
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid

    def until(self, done: Callable[[list[Any]], bool], timeout: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not done(self.events) and not self.eof:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                break
            if self.strip_goaway:
                data = self._strip(data)
            for ev in self.conn.receive_data(data):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            with_closed = self.conn.state_machine.state.name == "CLOSED"
            if not with_closed:
                self.flush()
        return self.events

    def _strip(self, data: bytes) -> bytes:
        buf = self._frames + data
        out = []
        while len(buf) >= 9:
            size = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + size:
                break
            frame, buf = buf[: 9 + size], buf[9 + size :]
            if frame[3] == 7:  # GOAWAY
                last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                self.goaways.append((last, int.from_bytes(frame[13:17], "big")))
            else:
                out.append(frame)
        self._frames = buf
        return b"".join(out)

    def response(self, sid: int) -> tuple[int, dict[bytes, bytes], bytes]:
        def ended(evs: list[Any]) -> bool:
            return any(
                isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) and e.stream_id == sid
                for e in evs
            )

        evs = self.until(ended)
        status, headers, body = 0, {}, b""
        for e in evs:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                headers = dict(e.headers)
                status = int(headers[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
        return status, headers, body

    def terminated(self) -> Any:
        for e in self.until(lambda evs: any(isinstance(x, h2.events.ConnectionTerminated)
                                            for x in evs)):  # fmt: skip
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    def close(self) -> None:
        self.sock.close()


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = (
            f"proto={self.headers.get('X-Forwarded-Proto')} host={self.headers.get('Host')} "
            f"path={self.path}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        body = f"got {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """An upstream that accepts connections (in the kernel's queue) and never answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    yield lsock.getsockname()[1]
    lsock.close()


# --- serving -----------------------------------------------------------------------------------
# (every test but the ALPN one runs once per HTTP/2 engine: web.h2engines)


@pytest.mark.usefixtures("h2_engine")
def test_static_range_big_file_gzip_head_and_log_over_curl_http2(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path]
) -> None:
    ca = certs[0]
    port = free_port()
    logf = tmp_path / "access.log"
    proc = serve(tmp_path, site(port, certs, www, f"  gzip\n  log {logf}\n"), port=port)
    try:
        r = curl(port, ca, "/", "--http2", "-D", "-")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/2 200") and r.stdout.endswith(b"\r\n\r\nhello\n")
        r = curl(port, ca, "/big.bin", "--http2", "-r", "1000-1999", "-w", "%{http_code}")
        assert r.stdout == (www / "big.bin").read_bytes()[1000:2000] + b"206", r.stderr
        r = curl(port, ca, "/big.bin", "--http2")
        digest = hashlib.sha256((www / "big.bin").read_bytes()).hexdigest()
        assert hashlib.sha256(r.stdout).hexdigest() == digest
        r = curl(port, ca, "/page.txt", "--http2", "--compressed", "-D", "-")
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        assert b"content-encoding: gzip" in head and body == (www / "page.txt").read_bytes()
        r = curl(port, ca, "/big.bin", "--http2", "-I")
        assert r.stdout.startswith(b"HTTP/2 200") and b"content-length: 1048576" in r.stdout
        # HTTP/1.1 is still there for clients that offer only it
        r = curl(port, ca, "/", "--http1.1", "-D", "-")
        assert r.stdout.startswith(b"HTTP/1.1 200") and r.stdout.endswith(b"hello\n")
        deadline = time.monotonic() + 5
        while b"HTTP/1.1" not in logf.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = logf.read_text()
        assert '"GET / HTTP/2.0" 200 6' in text and '"GET / HTTP/1.1" 200 6' in text, text
    finally:
        proc.stop()


@pytest.mark.usefixtures("h2_engine")
def test_proxy_to_http11_upstream_and_basicauth_canonical_path(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path], upstream: Any
) -> None:
    ca = certs[0]
    port = free_port()
    up = upstream.server_address[1]
    extra = (
        f"  basicauth /secret bob hunter2\n  proxy /api 127.0.0.1:{up} {{\n    transparent\n  }}\n"
    )
    proc = serve(tmp_path, site(port, certs, www, extra), port=port)
    try:
        r = curl(port, ca, "/api/x?y=1", "--http2", "-w", " %{http_version}")
        assert r.stdout == f"proto=https host=a.test:{port} path=/api/x?y=1\n 2".encode(), r.stderr
        # a request body bigger than the stream's window: credit given back as it is read
        upload = tmp_path / "upload.bin"
        upload.write_bytes(os.urandom(300_000))
        r = curl(port, ca, "/api/up", "--http2", "--data-binary", f"@{upload}")
        digest = hashlib.sha256(upload.read_bytes()).hexdigest()
        assert r.stdout == f"got 300000 {digest}\n".encode(), r.stderr
        r = curl(port, ca, "//secret/s.txt", "--http2", "--path-as-is", "-w", "%{http_code}")
        assert r.stdout.endswith(b"401"), r.stdout
        r = curl(port, ca, "/secret/s.txt", "--http2", "-u", "bob:hunter2")
        assert r.stdout == b"top secret\n"
        client = Client(port, ca)
        try:
            for path in (
                "//secret/s.txt",
                "/./secret/s.txt",
                "/x/../secret/s.txt",
                "/%73ecret/s.txt",
            ):
                status, _, body = client.response(client.request(path))
                assert status == 401 and b"top secret" not in body, path
            status, _, _ = client.response(client.request("/../etc/passwd"))
            assert status == 400
        finally:
            client.close()
    finally:
        proc.stop()


@pytest.mark.usefixtures("h2_engine")
def test_many_streams_on_one_connection(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path]
) -> None:
    ca = certs[0]
    port = free_port()
    proc = serve(tmp_path, site(port, certs, www), port=port)
    try:
        client = Client(port, ca)
        sids = [client.request("/big.bin" if i % 10 == 0 else "/") for i in range(200)]
        big = (www / "big.bin").read_bytes()
        for i, sid in enumerate(sids):
            status, _, body = client.response(sid)
            assert status == 200 and body == (big if i % 10 == 0 else b"hello\n"), i
        client.close()
    finally:
        proc.stop()


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("h2_engine")
def test_streams_past_the_limit_are_refused_and_big_heads_get_431(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path], blackhole: int
) -> None:
    ca = certs[0]
    port = free_port()
    extra = f"  proxy /hang 127.0.0.1:{blackhole}\n"
    proc = serve(tmp_path, site(port, certs, www, extra), port=port)
    try:
        client = Client(port, ca)
        settings = client.until(
            lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs)
        )
        changed = next(e for e in settings if isinstance(e, h2.events.RemoteSettingsChanged))
        limit = changed.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
        assert limit.new_value == 250
        client.conn.remote_settings = h2.settings.Settings(  # the client ignores it on purpose
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000},
        )
        for _ in range(260):
            client.request("/hang")
        evs = client.until(
            lambda evs: sum(isinstance(e, h2.events.StreamReset) for e in evs) >= 10, timeout=10
        )
        resets = [e for e in evs if isinstance(e, h2.events.StreamReset)]
        assert len(resets) == 10 and {e.error_code for e in resets} == {ErrorCodes.REFUSED_STREAM}
        client.close()
        client = Client(port, ca)
        status, _, _ = client.response(client.request("/", extra=[("x-big", "a" * 20000)]))
        assert status == 431
        status, _, body = client.response(client.request("/"))  # the connection goes on
        assert (status, body) == (200, b"hello\n")
        client.close()
    finally:
        proc.stop()


@pytest.mark.usefixtures("h2_engine")
def test_rapid_reset_and_settings_flood_are_cut_off(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path], blackhole: int
) -> None:
    ca = certs[0]
    port = free_port()
    extra = f"  proxy /hang 127.0.0.1:{blackhole}\n"
    proc = serve(tmp_path, site(port, certs, www, extra), port=port)
    try:
        client = Client(port, ca)
        for _ in range(300):  # CVE-2023-44487: open and cancel, in a loop
            sid = client.request("/hang")
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            try:
                client.flush()
            except OSError:
                break
        ev = client.terminated()
        assert ev is not None and ev.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        client.close()
        client = Client(port, ca)
        for _ in range(300):
            client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
            try:
                client.flush()
            except OSError:
                break
        ev = client.terminated()
        assert ev is not None and ev.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        client.close()
        # a well-behaved client is still served
        r = curl(port, ca, "/", "--http2")
        assert r.stdout == b"hello\n"
    finally:
        proc.stop()


# --- GOAWAY ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("h2_engine")
def test_reload_and_shutdown_send_goaway_after_open_streams_finish(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path], upstream: Any
) -> None:
    ca = certs[0]
    port = free_port()
    upstream.RequestHandlerClass = type("Slow", (_Upstream,), {"delay": 1.0})
    extra = f"  proxy /slow 127.0.0.1:{upstream.server_address[1]}\n"
    proc = serve(tmp_path, site(port, certs, www, extra), port=port)
    try:
        for sig in (signal.SIGUSR1, signal.SIGTERM):  # reload, then shutdown
            client = Client(port, ca)
            client.strip_goaway = True
            sid = client.request("/slow")
            time.sleep(0.3)
            proc.signal(sig)
            status, _, body = client.response(sid)
            assert status == 200 and body.startswith(b"proto="), body
            client.until(lambda evs: False, timeout=3)  # to the end of the connection
            assert client.eof
            assert client.goaways == [(sid, 0), (sid, 0)], client.goaways
            client.close()
        assert proc.wait(10) == 0
    finally:
        proc.stop()


# --- ALPN and the flag -------------------------------------------------------------------------


def _alpn(port: int, offer: list[str]) -> str | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(offer)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="a.test") as tls,
    ):
        return tls.selected_alpn_protocol()


def test_alpn_and_the_http2_flag(tmp_path: Path, www: Path, certs: tuple[CA, Path, Path]) -> None:
    port = free_port()
    proc = serve(tmp_path, site(port, certs, www), port=port)
    try:
        assert _alpn(port, ["h2", "http/1.1"]) == "h2"
        assert _alpn(port, ["http/1.1"]) == "http/1.1"
    finally:
        proc.stop()
    port = free_port()
    proc = serve(tmp_path, site(port, certs, www), "-http2=false", port=port)
    try:
        assert _alpn(port, ["h2", "http/1.1"]) == "http/1.1"
        r = curl(port, certs[0], "/", "--http2", "-w", " %{http_version}")
        assert r.stdout == b"hello\n 1.1"
    finally:
        proc.stop()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
@pytest.mark.usefixtures("h2_engine")
def test_h2load_completes_without_errors(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path]
) -> None:
    port = free_port()
    proc = serve(tmp_path, site(port, certs, www, host="127.0.0.1"), port=port)
    try:
        r = subprocess.run(
            ["h2load", "-n", "2000", "-c", "4", "-m", "16", f"https://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in r.stdout, r.stdout
        assert "status codes: 2000 2xx" in r.stdout, r.stdout
    finally:
        proc.stop()
