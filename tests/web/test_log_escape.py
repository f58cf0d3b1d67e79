"""Log lines cannot be forged (issue 16): a decoded `%0a` in the path, a `"` or `\\` in a
header, written by the access log (`log`) and the error log (`errors { log FILE }`) of a
real `python -m meshkit web -conf Caddyfile` process, are escaped as nginx's escape=default
writes them (`\\xHH`); other uses of placeholders get the values unescaped."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshkit.web.logfile import StreamSink
from meshkit.web.message import Headers, Request
from meshkit.web.placeholders import compile_template, log_escape
from support.peers import Proc, free_port, wait_tcp


def _wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text.count("\n") >= n:
                break
        time.sleep(0.05)
    return text.splitlines()


def _get(port: int, target: bytes, *fields: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(f + b"\r\n" for f in fields)
            + b"Connection: close\r\n\r\n"
        )
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_access_and_error_logs_escape_values(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    root = tmp_path / "root"
    root.mkdir()
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"127.0.0.1:{port} {{\n    root {root}\n"
        f'    log / {access} "{{path}} {{>User-Agent}} {{uri}} [{{>X-Missing}}] {{status}}"\n'
        f"    errors {{\n        404 missing.html\n        log {errors}\n    }}\n}}\n"
    )
    proc = spawn([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], fastpath_env)
    wait_tcp(port, proc)
    reply = _get(
        port,
        b"/a%0d%0aFORGED%22x%5c%1b%7f?q=%0a",
        b'User-Agent: ua"q\\z\tt',
    )
    assert reply.startswith(b"HTTP/1.1 404")
    lines = _wait_lines(access, 1)
    assert lines == [
        "/a\\x0D\\x0AFORGED\\x22x\\x5C\\x1B\\x7F ua\\x22q\\x5Cz\\x09t"
        " /a%0d%0aFORGED%22x%5c%1b%7f?q=%0a [-] 404"
    ]
    lines = _wait_lines(errors, 1)
    assert len(lines) == 1 and "FORGED" in lines[0], lines
    assert "/a\\x0D\\x0AFORGED" in lines[0] and "\\x1B\\x7F" in lines[0]


def test_log_escape_only_in_log_templates() -> None:
    request = Request(
        "GET", "/a%0ab", "/a\nb", headers=Headers([("User-Agent", 'x"y\\')])
    )
    plain = compile_template("{path} {>User-Agent}")
    logged = compile_template("{path} {>User-Agent}", "-", escape=True)
    assert plain.render(request) == 'a\nb x"y\\'.replace("a", "/a", 1)
    assert logged.render(request) == "/a\\x0Ab x\\x22y\\x5C"
    assert log_escape("plain/path é") == "plain/path é"
    assert log_escape("\u2028\x85") == "\\u2028\\x85"


def test_sink_keeps_one_line_per_write(capsys) -> None:  # type: ignore[no-untyped-def]
    sink = StreamSink("stdout")
    sink.write("one\ntwo\r\x00\tend")
    sink.flush()
    assert capsys.readouterr().out == "one\\x0Atwo\\x0D\\x00\tend\n"
