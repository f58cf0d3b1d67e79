"""The listener options of `meshkit web`: `bind`, IPv6 and dual-stack listeners, `timeouts`
and `proxyprotocol` (behind meshkit's own ingress with --proxy-protocol v2), with real
processes and clients."""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.l4.proxyproto import encode_v1, encode_v2
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.server import host_has_ipv6
from support.peers import Proc, free_port, ingress_argv, wait_tcp

MESHKIT_WEB = [sys.executable, "-m", "meshkit", "web"]
needs_ipv6 = pytest.mark.skipif(not host_has_ipv6(), reason="no IPv6 on this host")


def _errors(text: str) -> list[str]:
    return [str(e) for e in load_text(text).errors]


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ("bind", "Caddyfile:2"),
        ("bind 127.0.0.1 ::1", "Caddyfile:2"),
        ("bind not_a_host!", "neither an IP address nor a host name"),
        ("timeouts", "Caddyfile:2"),
        ("timeouts 10x", "Caddyfile:2"),
        ("timeouts {\n  body 5s\n }", "unknown timeouts option 'body'"),
        ("timeouts {\n  read -1s\n }", "Caddyfile:3"),
        ("proxyprotocol {\n  timeout\n }", "Caddyfile:3"),
        ("proxyprotocol 198.18.0.300/15", "not an address range"),
        ("proxyprotocol 127.0.0.1 {\n  wait 1s\n }", "unknown proxyprotocol option 'wait'"),
    ],
)
def test_bad_lines_are_named(block: str, needle: str) -> None:
    errors = _errors(f":8080 {{\n {block}\n}}\n")
    assert errors and needle in errors[0], errors


def test_plan_merges_per_port() -> None:
    config = load_text(
        ":8080 {\n bind 127.0.0.1\n timeouts 30s\n proxyprotocol 127.0.0.0/8\n}\n"
        "a.test:8080 {\n bind [::1]\n timeouts {\n  idle none\n  header 5s\n }\n"
        " proxyprotocol 198.51.100.0/24 {\n  timeout 2s\n }\n}\n"
        ":8081 {\n root .\n}\n"
        ":8082 {\n bind 127.0.0.1\n}\nb.test:8082 {\n root .\n}\n"
    )
    assert not config.errors, config.errors
    ports = plan(config)
    p = ports[8080]
    assert p.binds == ["127.0.0.1", "::1"]
    assert p.timeouts == {"header": 5.0, "read": 30.0, "write": 30.0, "idle": math.inf}
    assert p.proxy is not None and p.proxy.timeout == 2.0
    assert p.proxy.trusts("127.0.0.9") and p.proxy.trusts("198.51.100.7")
    assert p.proxy.trusts("::ffff:127.0.0.1") and not p.proxy.trusts("192.0.2.1")
    assert ports[8081].binds == [] and ports[8081].proxy is None
    assert ports[8081].timeouts == {"header": 10.0, "read": 60.0, "write": 120.0, "idle": 120.0}
    assert ports[8082].binds == []  # one site of the port has no bind: every address


def _start(tmp: Path, body: str, ports: list[int], host: str = "127.0.0.1") -> Proc:
    (tmp / "index.html").write_text("hello\n")
    conf = tmp / "Caddyfile"
    conf.write_text(body.replace("ROOT", str(tmp)))
    proc = Proc([*MESHKIT_WEB, "-conf", str(conf)])
    for port in ports:
        wait_tcp(port, proc, host=host)
    return proc


def _get(host: str, port: int, source: str | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def _refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) != 0


@needs_ipv6
def test_default_listener_is_dual_stack_and_bind_narrows_it(tmp_path: Path) -> None:
    every, v6, v4 = free_port(), free_port(), free_port()
    proc = _start(
        tmp_path,
        f":{every} {{\n root ROOT\n}}\n:{v6} {{\n bind [::1]\n root ROOT\n}}\n"
        f":{v4} {{\n bind 127.0.0.2\n root ROOT\n}}\n",
        [every],
    )
    try:
        wait_tcp(v6, proc, host="::1")
        wait_tcp(v4, proc, host="127.0.0.2")
        assert _get("127.0.0.1", every).endswith(b"hello\n")
        assert _get("::1", every).endswith(b"hello\n")
        assert _get("::1", v6).endswith(b"hello\n")
        assert _refused("127.0.0.1", v6)
        assert _get("127.0.0.2", v4).endswith(b"hello\n")
        assert _refused("127.0.0.1", v4) and _refused("::1", v4)
        assert f"listening on [::]:{every}" in proc.stderr()
    finally:
        proc.stop()


@needs_ipv6
def test_bind_wildcard_v6_serves_both_families(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, f":{port} {{\n bind ::\n root ROOT\n}}\n", [port])
    try:
        assert _get("127.0.0.1", port).endswith(b"hello\n")
        assert _get("::1", port).endswith(b"hello\n")
    finally:
        proc.stop()


def test_a_bind_address_the_host_lacks_is_an_error(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f":{port} {{\n bind 192.0.2.77\n}}\n")
    out = subprocess.run(
        [*MESHKIT_WEB, "-conf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert f"192.0.2.77:{port}" in out.stderr and "Traceback" not in out.stderr


def _idle_close_after(port: int, limit: float) -> bool:
    """Whether the server closes a connection that sends nothing within `limit` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        try:
            return s.recv(1) == b""
        except TimeoutError:
            return False


def test_timeouts_header_and_none(tmp_path: Path) -> None:
    short, off = free_port(), free_port()
    proc = _start(
        tmp_path,
        f"127.0.0.1:{short} {{\n root ROOT\n timeouts {{\n  header 1s\n }}\n}}\n"
        f"127.0.0.1:{off} {{\n root ROOT\n timeouts none\n}}\n",
        [short, off],
    )
    try:
        assert _idle_close_after(short, 15.0)  # the default would be 10 s: closed at ~1 s
        assert not _idle_close_after(off, 3.0)
        # a request head that stalls past `header` gets 408
        with socket.create_connection(("127.0.0.1", short), timeout=15) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 408"), data
    finally:
        proc.stop()


def test_proxyprotocol_headers_from_listed_and_unlisted_sources(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    proc = _start(
        tmp_path,
        f":{port} {{\n root ROOT\n proxyprotocol 127.0.0.5/32\n"
        f' log / {log} "{{remote}} {{uri}}"\n}}\n',
        [port],
    )
    try:
        for header, path in (
            (encode_v1("tcp", ("203.0.113.7", 4444), ("127.0.0.1", port)), "/v1"),
            (encode_v2("tcp", ("2001:db8::9", 4444), ("::1", port)), "/v2"),
        ):
            with socket.socket() as s:
                s.settimeout(10)
                s.bind(("127.0.0.5", 0))
                s.connect(("127.0.0.1", port))
                # the header in two pieces, then the request
                s.sendall(header[:7])
                time.sleep(0.05)
                s.sendall(header[7:] + f"GET {path} HTTP/1.0\r\n\r\n".encode())
                assert s.recv(4096).startswith(b"HTTP/1.1 404")  # served: no such file
        # a listed source without a header is itself
        assert _get("127.0.0.1", port, source="127.0.0.5").startswith(b"HTTP/1.1 200")
        # an unlisted source's header is refused
        with socket.socket() as s:
            s.settimeout(10)
            s.bind(("127.0.0.6", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(encode_v1("tcp", ("203.0.113.8", 1), ("127.0.0.1", port)) + b"GET /x\r\n")
            with contextlib.suppress(ConnectionResetError):  # or reset: unread bytes
                assert s.recv(4096) == b""  # closed unanswered
        deadline = time.monotonic() + 10
        while "not listed in proxyprotocol" not in proc.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "127.0.0.6" in proc.stderr() and "not listed in proxyprotocol" in proc.stderr()
        proc.signal(15)
        proc.wait(20)
        lines = log.read_text().splitlines()
        assert "203.0.113.7 /v1" in lines and "2001:db8::9 /v2" in lines
        assert "127.0.0.5 /" in lines
    finally:
        proc.stop()


def test_meshkit_ingress_in_front_shows_the_client(tmp_path: Path) -> None:
    """The routing mesh's balancer with --proxy-protocol v2 in front of a site: the access
    log and {remote} name the client, not the balancer."""
    web_port, front = free_port(), free_port()
    log = tmp_path / "access.log"
    proc = _start(
        tmp_path,
        f":{web_port} {{\n root ROOT\n proxyprotocol 127.0.0.1/32\n"
        f' log / {log} "{{remote}} {{uri}}"\n header / X-Client {{remote}}\n}}\n',
        [web_port],
    )
    ingress = Proc(
        ingress_argv(
            "--publish",
            f"127.0.0.1:{front}:{web_port}",
            "--backend",
            f"127.0.0.1:{web_port}",
            "--proxy-protocol",
            "v2",
        )
    )
    try:
        wait_tcp(front, ingress)
        reply = _get("127.0.0.1", front, source="127.0.0.7")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b"X-Client: 127.0.0.7" in reply
        proc.signal(15)
        proc.wait(20)
        assert "127.0.0.7 /" in log.read_text().splitlines()
    finally:
        ingress.stop()
        proc.stop()
