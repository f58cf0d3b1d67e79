"""The web server as a node agent runs it (start_embedded): on the caller's loop, reloads
that keep serving, errors before listening, and a stop that lets requests finish."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.base.errors import MeshkitError
from meshkit.web.caddyfile.load import CaddyfileErrors, Defaults
from meshkit.web.embedded import start_embedded
from support.e2e_util import curl
from support.loopthread import Directory, LoopThread
from support.peers import free_port


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    r = LoopThread()
    try:
        yield r
    finally:
        r.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serves_reloads_and_stops(
    runner: LoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshkit.web")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text("site a\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.html").write_text("site b\n")
    p1, p2 = free_port(), free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f":{p1} {{\n root {tmp_path / 'a'}\n}}\n")
    handlers_before = signal_handlers()
    web = runner.call(start_embedded(str(conf), Directory(runner)))
    try:
        assert web.ports == [p1]
        assert curl(p1, "/", tmp=tmp_path).body == b"site a\n"
        assert signal_handlers() == handlers_before  # the agent's signals stay the agent's
        assert f"listening on 0.0.0.0:{p1}" in caplog.text

        conf.write_text(
            f":{p1} {{\n root {tmp_path / 'b'}\n}}\n:{p2} {{\n root {tmp_path / 'a'}\n}}\n"
        )
        assert runner.call(web.reload()) is True
        assert web.ports == sorted([p1, p2])
        assert curl(p1, "/", tmp=tmp_path).body == b"site b\n"
        assert curl(p2, "/", tmp=tmp_path).body == b"site a\n"

        conf.write_text(f":{p1} {{\n proxy / service://web\n}}\n")  # broken: kept as it was
        assert runner.call(web.reload()) is False
        assert f"{conf}:2" in caplog.text
        assert web.ports == sorted([p1, p2])
        assert curl(p2, "/", tmp=tmp_path).body == b"site a\n"
    finally:
        runner.call(web.stop(1.0))
    assert not _listening(p1) and not _listening(p2)
    assert runner.call(web.reload()) is False  # stopped for good
    runner.call(web.stop(1.0))  # twice is harmless


def signal_handlers() -> list[object]:
    import signal

    return [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]


def test_errors_come_before_listening(runner: LoopThread, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f":{port} {{\n gzip\n nosuchthing\n}}\n")
    with pytest.raises(CaddyfileErrors) as info:
        runner.call(start_embedded(str(conf), Directory(runner)))
    assert str(info.value).startswith(f"{conf}:3")
    assert not _listening(port)

    with pytest.raises(MeshkitError) as missing:
        runner.call(start_embedded(str(tmp_path / "nope"), Directory(runner)))
    assert "nope" in str(missing.value)

    # a port already taken: MeshkitError naming it, and the other ports are not left open
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    free = free_port()
    conf.write_text(f":{free}\n:{busy}\n")
    try:
        with pytest.raises(MeshkitError) as used:
            runner.call(start_embedded(str(conf), Directory(runner)))
        assert str(busy) in str(used.value)
        assert not _listening(free)
    finally:
        taken.close()


def test_defaults_and_the_callers_loop(runner: LoopThread, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("default root\n")
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text("localhost\n")  # no port: the default's
    gate = threading.Event()
    web = runner.call(
        start_embedded(str(conf), Directory(runner), Defaults(port=port, root=str(tmp_path)))
    )
    try:
        assert web.ports == [port]
        r = curl(port, "/", "-H", "Host: localhost", tmp=tmp_path)
        assert r.body == b"default root\n"

        # it runs on the loop that started it: a blocked loop answers nothing
        runner.loop.call_soon_threadsafe(gate.wait, 5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(100)
            gate.set()
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        gate.set()
        runner.call(web.stop(1.0))
