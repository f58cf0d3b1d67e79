"""realip, request_id, expvar and v1's small grammar points (header NAME with no value,
log ipmask "" V6MASK, errors with a nested log block, internal with no path) against a real
`meshkit web` process, with curl as the client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.peers import Proc, free_port, wait_tcp


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("misc")
    root = tmp / "root"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    (root / "404.html").write_text("custom not found\n")
    port = free_port()
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"""127.0.0.1:{port} {{
    root {root}
    realip {{
        from 127.0.0.0/8
        maxhops 3
    }}
    request_id X-Request-ID
    log / {tmp}/access.log "{{remote}} {{request_id}} {{uri}}"
    expvar /debug/vars
    header / X-Empty
    header /rid X-Rid {{request_id}}
    internal
    errors {{
        log {tmp}/error.log {{
            rotate_size 1
            rotate_keep 2
        }}
        404 404.html
    }}
}}
"""
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        yield port, tmp
    finally:
        proc.stop()


def curl(*args: str) -> str:
    out = subprocess.run(["curl", "-s", "-i", *args], capture_output=True, text=True, check=True)
    return out.stdout


def _log_lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{n} log lines expected, got {lines}")


def test_realip_rewrites_what_log_and_placeholders_see(site: tuple[int, Path]) -> None:
    port, tmp = site
    log = tmp / "access.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    url = f"http://127.0.0.1:{port}"
    # the peer (127.0.0.1) is trusted: the last address not itself trusted is the client
    curl(f"{url}/one", "-H", "X-Forwarded-For: 203.0.113.9, 198.51.100.4")
    # a trusted hop in the chain is skipped: 203.0.113.9 is the client
    curl(f"{url}/two", "-H", "X-Forwarded-For: 203.0.113.9, 127.0.0.5")
    # no header: the socket's address
    curl(f"{url}/three")
    lines = _log_lines(log, before + 3)[before:]
    assert lines[0].startswith("198.51.100.4 ") and lines[0].endswith(" /one")
    assert lines[1].startswith("203.0.113.9 ") and lines[1].endswith(" /two")
    assert lines[2].startswith("127.0.0.1 ")
    # more addresses than maxhops: refused
    head = curl(f"{url}/", "-H", "X-Forwarded-For: 192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4")
    assert head.startswith("HTTP/1.1 403")


def test_request_id_is_made_or_taken_from_the_header(site: tuple[int, Path]) -> None:
    port, tmp = site
    log = tmp / "access.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    url = f"http://127.0.0.1:{port}/rid"
    made = re.search(r"(?im)^X-Rid: (\S+)", curl(url))
    assert made is not None and uuid.UUID(made.group(1)).version == 4
    again = re.search(r"(?im)^X-Rid: (\S+)", curl(url))
    assert again is not None and again.group(1) != made.group(1)
    given = "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"
    kept = re.search(r"(?im)^X-Rid: (\S+)", curl(url, "-H", f"X-Request-ID: {given}"))
    assert kept is not None and kept.group(1) == given.lower()
    # the log line of that request (the third) carries the same ID; the server may write
    # it a little after curl has its answer
    assert any(f" {given.lower()} /rid" in line for line in _log_lines(log, before + 3))
    junk = re.search(r"(?im)^X-Rid: (\S+)", curl(url, "-H", "X-Request-ID: not-a-uuid"))
    assert junk is not None and uuid.UUID(junk.group(1)).version == 4


def test_expvar_serves_the_servers_figures(site: tuple[int, Path]) -> None:
    port, _ = site
    curl(f"http://127.0.0.1:{port}/")
    out = subprocess.run(
        ["curl", "-s", "-D", "-", f"http://127.0.0.1:{port}/debug/vars"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    head, _, body = out.partition("\n\n")
    assert "application/json" in head
    assert body.startswith('{\n"cmdline": ')  # Go's expvar layout: one member per line
    data = json.loads(body)
    figures = data["meshkit"]
    assert figures["open_connections"] >= 1  # this very request's
    assert figures["servers"] >= 1
    assert figures["site_requests"] >= 2
    assert figures["site_responses_by_class"]["2xx"] >= 1
    assert data["memstats"]["rss_bytes"] > 1 << 20
    assert data["memstats"]["open_fds"] > 3
    assert "meshkit" in " ".join(data["cmdline"])


def test_header_with_no_value_is_sent_empty(site: tuple[int, Path]) -> None:
    port, _ = site
    head = curl(f"http://127.0.0.1:{port}/")
    assert re.search(r"(?im)^X-Empty: ?$", head), head  # curl -s -i, text mode: no CR


def test_internal_with_no_path_hides_nothing(site: tuple[int, Path]) -> None:
    port, _ = site
    assert curl(f"http://127.0.0.1:{port}/").startswith("HTTP/1.1 200")


def test_errors_with_a_nested_log_block_serves_its_pages(site: tuple[int, Path]) -> None:
    port, _ = site
    out = curl(f"http://127.0.0.1:{port}/nope")
    assert out.startswith("HTTP/1.1 404") and out.endswith("custom not found\n")


def test_log_ipmask_with_an_empty_ipv4_mask(tmp_path: Path) -> None:
    """`ipmask "" V6MASK`: IPv4 clients are logged unmasked (v1), the v6 mask still applies."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.html").write_text("x\n")
    port = free_port()
    conf = tmp_path / "Caddyfile"
    log = tmp_path / "a.log"
    conf.write_text(
        f'127.0.0.1:{port} {{\n root {root}\n log / {log} "{{remote}}" {{\n'
        f'  ipmask "" ffff:ffff::\n }}\n}}\n'
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        curl(f"http://127.0.0.1:{port}/")
        assert _log_lines(log, 1) == ["127.0.0.1"]
    finally:
        proc.stop()
