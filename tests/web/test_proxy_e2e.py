"""The proxy directive end to end: meshkit servers as backends, curl as the client."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.base.errors import MeshkitError
from meshkit.web.caddyfile.load import load_text
from meshkit.web.message import HandlerResult, Headers, Request, Response
from support.e2e_util import Running, curl
from support.webproxy import _close, _proxy


def _backend(name: str) -> Running:
    async def echo(request: Request) -> Response:
        body = await request.body.read_all()
        if request.path.startswith("/big"):
            size = int(request.query.split("=")[1]) if request.query else 3_000_000

            async def gen() -> object:
                for _ in range(size // 100_000):
                    yield b"x" * 100_000

            return Response(200, Headers([("X-Backend", name)]), gen())  # type: ignore[arg-type]
        if request.path.startswith("/slow"):
            await asyncio.sleep(3)
        lines = [f"backend={name}", f"method={request.method}", f"uri={request.uri}"]
        for k, v in request.headers:
            lines.append(f"{k.lower()}={v}")
        lines.append(f"body={len(body)}:{body[:20]!r}")
        return Response(
            200,
            Headers([("X-Backend", name), ("X-Secret", "s")]),
            ("\n".join(lines) + "\n").encode(),
        )

    def handler(request: Request) -> HandlerResult:
        return echo(request)

    return Running(handler)


@pytest.fixture
def backends() -> Iterator[list[Running]]:
    run = [_backend(f"b{i}") for i in range(3)]
    try:
        yield run
    finally:
        for r in run:
            r.close()


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
    out = {}
    for line in body.decode().splitlines():
        k, _, v = line.partition("=")
        out.setdefault(k, v)
    return out


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_round_robin_headers_and_forwarding(backends, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ups = " ".join(f"127.0.0.1:{b.port}" for b in backends)
    p = make_proxy(
        f""":2015
proxy /api {ups} {{
    policy round_robin
    header_upstream X-Up hello
    header_upstream -User-Agent
    header_downstream -X-Secret
    header_downstream +X-Down yes
    without /api
    except /api/private
}}
"""
    )
    seen = []
    for _ in range(6):
        r = curl(p.port, "/api/thing?q=1", "-H", "X-Forwarded-For: 203.0.113.9", tmp=tmp_path)
        assert r.status == 200
        f = _fields(r.body)
        seen.append(f["backend"])
        assert f["uri"] == "/thing?q=1"
        assert f["x-up"] == "hello"
        assert "user-agent" not in f
        assert f["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert f["host"] == f"127.0.0.1:{backends[int(f['backend'][1])].port}"
        assert "x-secret" not in r.headers and r.headers["x-down"] == "yes"
    assert seen == ["b0", "b1", "b2"] * 2
    assert curl(p.port, "/api/private/x", tmp=tmp_path).body == b"fileserver\n"
    assert curl(p.port, "/other", tmp=tmp_path).body == b"fileserver\n"


@pytest.mark.parametrize(
    "policy", ["random", "least_conn", "ip_hash", "uri_hash", "first", "header X-User"]
)
def test_policies(backends, make_proxy, tmp_path: Path, policy: str) -> None:  # type: ignore[no-untyped-def]
    ups = " ".join(f"127.0.0.1:{b.port}" for b in backends)
    p = make_proxy(f":2015\nproxy / {ups} {{\n policy {policy}\n}}\n")
    got = set()
    for n in range(9):
        r = curl(p.port, f"/p{n}", "-H", "X-User: alice", tmp=tmp_path)
        got.add(_fields(r.body)["backend"])
    if policy in ("ip_hash", "first", "header X-User"):
        assert len(got) == 1
    elif policy == "uri_hash":
        again = {_fields(curl(p.port, "/p1", tmp=tmp_path).body)["backend"] for _ in range(3)}
        assert len(again) == 1
    else:
        assert len(got) >= 2


def test_port_range_transparent_and_longest_prefix(backends, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = backends[0].port
    p = make_proxy(
        f":2015\nproxy / 127.0.0.1:{port}-{port} {{\n transparent\n}}\n"
        f"proxy /b 127.0.0.1:{backends[1].port}\n"
    )
    r = curl(p.port, "/x", "-H", "Host: example.test", tmp=tmp_path)
    f = _fields(r.body)
    assert f["backend"] == "b0" and f["host"] == "example.test"
    assert f["x-real-ip"] == "127.0.0.1" and f["x-forwarded-proto"] == "http"
    assert f["x-forwarded-port"] == str(p.port)
    assert _fields(curl(p.port, "/b/1", tmp=tmp_path).body)["backend"] == "b1"


def test_bodies_chunked_and_large_both_ways(backends, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(f":2015\nproxy / 127.0.0.1:{backends[0].port}\n")
    data = tmp_path / "up.bin"
    data.write_bytes(b"y" * 5_000_000)
    r = curl(p.port, "/post", "--data-binary", f"@{data}", tmp=tmp_path)
    assert _fields(r.body)["body"].startswith("5000000:")
    r = curl(
        p.port,
        "/post",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "@" + str(data),
        tmp=tmp_path,
    )
    f = _fields(r.body)
    assert f["body"].startswith("5000000:") and f["transfer-encoding"] == "chunked"
    r = curl(p.port, "/big?n=3000000", tmp=tmp_path)
    assert r.status == 200 and len(r.body) == 3_000_000
    assert r.headers.get("transfer-encoding") == "chunked"


def test_unix_upstream(make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "up.sock"
    srv = subprocess.Popen(
        [
            "python3",
            "-c",
            (
                "import http.server,socketserver,sys\n"
                "class H(http.server.BaseHTTPRequestHandler):\n"
                "  def do_GET(s):\n"
                "    b=b'unix ok\\n'; s.send_response(200)\n"
                "    s.send_header('Content-Length',str(len(b))); s.end_headers()\n"
                "    s.wfile.write(b)\n"
                "  def address_string(s): return 'unix'\n"
                "class S(socketserver.UnixStreamServer):\n"
                "  def get_request(s):\n"
                "    r,a=super().get_request(); return r,('unix',0)\n"
                f"S({str(path)!r},H).serve_forever()\n"
            ),
        ]
    )
    try:
        for _ in range(100):
            if path.exists():
                break
            import time

            time.sleep(0.05)
        p = make_proxy(f":2015\nproxy / unix:{path}\n")
        assert curl(p.port, "/", tmp=tmp_path).body == b"unix ok\n"
    finally:
        srv.terminate()
        srv.wait(5)


def test_502_retry_passive_and_log(backends, make_proxy, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    dead = _free_port()
    caplog.set_level(logging.ERROR, logger="meshkit.web")
    p = make_proxy(f":2015\nproxy / 127.0.0.1:{dead}\n")
    r = curl(p.port, "/", tmp=tmp_path)
    assert r.status == 502 and str(dead) not in r.body.decode()
    assert f"127.0.0.1:{dead}" in caplog.text
    p2 = make_proxy(
        f":2015\nproxy / 127.0.0.1:{dead} 127.0.0.1:{backends[0].port} {{\n policy first\n"
        " try_duration 2s\n fail_timeout 30s\n}\n"
    )
    for _ in range(3):
        r = curl(p2.port, "/", tmp=tmp_path)
        assert r.status == 200 and _fields(r.body)["backend"] == "b0"


def test_504_on_timeout(backends, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(f":2015\nproxy / 127.0.0.1:{backends[0].port} {{\n timeout 500ms\n}}\n")
    assert curl(p.port, "/slow", tmp=tmp_path).status == 504


def test_active_health_check(backends, make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import time

    b = backends
    p = make_proxy(
        f":2015\nproxy / 127.0.0.1:{b[0].port} 127.0.0.1:{b[1].port} {{\n policy round_robin\n"
        " health_check /health\n health_check_interval 100ms\n"
        " health_check_contains backend=b1\n}\n"
    )
    time.sleep(0.6)
    got = {_fields(curl(p.port, "/", tmp=tmp_path).body)["backend"] for _ in range(4)}
    assert got == {"b1"}  # b0's page lacks "backend=b1": taken out
    checker = p.background[0]  # type: ignore[attr-defined]
    checker.contains = b"backend="
    time.sleep(0.6)
    got = {_fields(curl(p.port, "/", tmp=tmp_path).body)["backend"] for _ in range(4)}
    assert got == {"b0", "b1"}  # brought back


def test_websocket_echo(make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    import threading

    def serve() -> None:
        conn, _ = lsock.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(4096)
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        rest = buf.split(b"\r\n\r\n", 1)[1]
        if rest:
            conn.sendall(rest.upper())
        while True:
            d = conn.recv(4096)
            if not d:
                break
            conn.sendall(d.upper())
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = make_proxy(f":2015\nproxy / 127.0.0.1:{lsock.getsockname()[1]} {{\n websocket\n}}\n")
    try:
        c = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        c.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        c.sendall(b"hello")
        got = b""
        while len(got) < 5:
            got += c.recv(100)
        assert got == b"HELLO"
        c.close()
        t.join(5)
    finally:
        lsock.close()


@pytest.mark.parametrize(
    "text,message",
    [
        ("proxy / 127.0.0.1:1 {\n policy fastest\n}", "Caddyfile:3 - unknown policy 'fastest'"),
        (
            "proxy / 127.0.0.1:1 {\n try_duration 5x\n}",
            'Caddyfile:3 - invalid duration "5x" for try_duration',
        ),
        ("proxy /api", "Caddyfile:2 - proxy /api: no upstream given"),
        ("proxy / 127.0.0.1:9-2", "Caddyfile:2 - port range '9-2'"),
        ("proxy / 127.0.0.1:1 {\n bogus 1\n}", "Caddyfile:3 - unknown proxy property 'bogus'"),
    ],
)
def test_caddyfile_errors(text: str, message: str) -> None:
    config = load_text(":2015\n" + text + "\n")
    with pytest.raises(MeshkitError) as info:
        config.raise_errors()
    assert message in str(info.value)
