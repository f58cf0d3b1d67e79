"""A real `python3 -m meshkit web -conf Caddyfile` process serving a static site, and raw
HTTP/1.1 exchanges with it over a socket (for the request-head tests)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.peers import Proc, free_port, wait_tcp


@contextmanager
def static_site(tmp: Path, env: dict[str, str], extra: str = "") -> Iterator[int]:
    """A static site (index.html is `hello`) on 127.0.0.1:<free port>; yields the port."""
    root = tmp / "root"
    root.mkdir()
    (root / "index.html").write_bytes(b"hello\n")
    port = free_port()
    conf = tmp / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n    root {root}\n{extra}}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], env)
    try:
        wait_tcp(port, proc)
        yield port
    finally:
        proc.stop()


def exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw (ignoring a reset once the server has answered and closed), read until the
    server closes; the status of the first response and everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        # refused early, the server may reset the rest: its answer is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data
