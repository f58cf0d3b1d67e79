"""`tls { protocols X }` with one protocol allows only X (Caddy v1's caddytls/setup.go sets
the minimum and the maximum): a `meshkit web` process and openssl s_client on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import issue, make_ca


def _hello(port: int, flag: str) -> str:
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag, "-brief"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout + r.stderr


def test_one_protocol_is_the_only_one(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "a", ["127.0.0.1"])
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n  tls {cert} {key} {{\n    protocols TLS1.2\n  }}\n}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        assert "Protocol version: TLSv1.2" in _hello(port, "-tls1_2")
        refused = _hello(port, "-tls1_3")
        assert "Protocol version: TLSv1.3" not in refused
        assert "alert" in refused.lower() or "error" in refused.lower(), refused
    finally:
        proc.stop()
