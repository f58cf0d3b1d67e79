"""h2c: cleartext HTTP/2 by prior knowledge on a plain port whose site says `tls off h2c`
(with -http2 on), never by the Upgrade: h2c dance; checked with curl and h2load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.peers import Proc, free_port, wait_tcp
from web.h2engines import h2_engine  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("h2_engine")  # each test once per HTTP/2 engine


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "-m", "10", "-w", "\n%{http_version}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _start(tmp: Path, flags: list[str]) -> tuple[Proc, int, int, Path]:
    h2c, plain = free_port(), free_port()
    (tmp / "index.html").write_text("hello\n")
    log = tmp / "access.log"
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"127.0.0.1:{h2c} {{\n root {tmp}\n tls off h2c\n"
        f' log / {log} "{{proto}} {{scheme}} {{uri}}"\n}}\n'
        f"127.0.0.1:{plain} {{\n root {tmp}\n}}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf), *flags])
    wait_tcp(h2c, proc)
    wait_tcp(plain, proc)
    return proc, h2c, plain, log


def test_prior_knowledge_only_where_asked(tmp_path: Path) -> None:
    proc, h2c, plain, log = _start(tmp_path, [])
    try:
        out = _curl("--http2-prior-knowledge", f"http://127.0.0.1:{h2c}/")
        assert out.stdout == "hello\n\n2", out
        # the Upgrade dance is not taken up: HTTP/1.1 answers
        out = _curl("--http2", f"http://127.0.0.1:{h2c}/")
        assert out.stdout == "hello\n\n1.1", out
        # a port whose sites did not ask: no HTTP/2 there
        out = _curl("--http2-prior-knowledge", f"http://127.0.0.1:{plain}/")
        assert not out.stdout.startswith("hello"), out
        assert _curl(f"http://127.0.0.1:{plain}/").stdout == "hello\n\n1.1"
        load = subprocess.run(
            ["h2load", "-c2", "-m8", "-n400", f"http://127.0.0.1:{h2c}/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "400 succeeded, 0 failed" in load.stdout, load.stdout
        proc.signal(15)
        proc.wait(20)
        lines = log.read_text().splitlines()
        assert lines.count("HTTP/2.0 http /") >= 401 and "HTTP/1.1 http /" in lines
    finally:
        proc.stop()


def test_off_with_http2_false(tmp_path: Path) -> None:
    proc, h2c, _plain, _log = _start(tmp_path, ["-http2=false"])
    try:
        out = _curl("--http2-prior-knowledge", f"http://127.0.0.1:{h2c}/")
        assert not out.stdout.startswith("hello"), out
        assert "h2c is off with -http2=false" in proc.stderr()
    finally:
        proc.stop()
