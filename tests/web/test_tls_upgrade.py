"""A websocket proxied over HTTPS (HTTP/1.1 over TLS): the 101 and then both directions of
the upgraded connection, through a real `meshkit web` process; and the PROXY protocol in
front of TLS."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path

from meshkit.l4.proxyproto import encode_v2
from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import issue, make_ca


def _echo_upstream() -> tuple[socket.socket, threading.Thread]:
    """An upstream answering an Upgrade with 101, then echoing in upper case."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()

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
        while d := conn.recv(65536):
            conn.sendall(d.upper())
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, t


def _site(tmp: Path, extra: str, upstream: int) -> tuple[Proc, int, ssl.SSLContext]:
    ca = make_ca(tmp)
    cert, key = issue(ca, tmp, "leaf", ["127.0.0.1"])
    port = free_port()
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"https://127.0.0.1:{port} {{\n tls {cert} {key}\n{extra}"
        f" proxy /ws 127.0.0.1:{upstream} {{\n  websocket\n }}\n}}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    wait_tcp(port, proc)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols(["http/1.1"])
    return proc, port, ctx


def _talk(c: ssl.SSLSocket) -> None:
    c.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    big = b"abc" * 100_000  # more than socket buffers: both directions must keep moving
    c.sendall(big)
    got = head.split(b"\r\n\r\n", 1)[1]
    while len(got) < len(big):
        chunk = c.recv(65536)
        assert chunk, "closed early"
        got += chunk
    assert got == big.upper()
    c.sendall(b"bye")
    got = b""
    while len(got) < 3:
        got += c.recv(100)
    assert got == b"BYE"


def test_websocket_over_tls(tmp_path: Path) -> None:
    lsock, t = _echo_upstream()
    proc, port, ctx = _site(tmp_path, "", lsock.getsockname()[1])
    try:
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1"
        ) as c:
            _talk(c)
        t.join(10)
        assert not t.is_alive()  # the client's close reached the upstream
    finally:
        proc.stop()
        lsock.close()


def test_proxy_protocol_before_tls(tmp_path: Path) -> None:
    lsock, t = _echo_upstream()
    proc, port, ctx = _site(tmp_path, " proxyprotocol 127.0.0.0/8\n", lsock.getsockname()[1])
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(encode_v2("tcp", ("198.51.100.20", 999), ("127.0.0.1", port)))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
            _talk(c)
        t.join(10)
    finally:
        proc.stop()
        lsock.close()
