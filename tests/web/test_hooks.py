"""startup, shutdown and `on EVENT COMMAND`: parsed with file:line errors, run by a real
`meshkit web` process (once per process, output and exit status logged, `&` in the
background), and certrenew fired by the certificate hub."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from meshkit.web.app import hook_commands
from meshkit.web.autotls import CertHub
from meshkit.web.caddyfile.load import load_text
from meshkit.web.hooks import Command, Hooks
from support.peers import Proc, free_port, wait_tcp


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("startup", "Caddyfile:2"),
        ("on", "Caddyfile:2"),
        ("on boot echo hi", "unknown event 'boot'"),
        ("on startup", "Caddyfile:2"),
        ("shutdown no-such-command-here x", "'no-such-command-here' is not found on PATH"),
        ("startup /no/such/file", "Caddyfile:2 - startup: '/no/such/file' is not an executable"),
        ("startup sh -c 'unclosed", "cannot split the command"),
    ],
)
def test_bad_lines_are_named(line: str, needle: str) -> None:
    errors = [str(e) for e in load_text(f":8080 {{\n {line}\n}}\n").errors]
    assert errors and needle in errors[0], errors


def test_commands_in_order_with_quotes_and_background() -> None:
    config = load_text(
        ":8080 {\n startup sh -c \"echo a; echo b\"\n on certrenew sh -c 'echo $X' &\n"
        " shutdown echo bye\n}\n"
    )
    assert not config.errors, config.errors
    assert hook_commands(config) == [
        Command("startup", ("sh", "-c", "echo a; echo b"), False, "Caddyfile:2"),
        Command("shutdown", ("echo", "bye"), False, "Caddyfile:4"),
        Command("certrenew", ("sh", "-c", "echo $X"), True, "Caddyfile:3"),
    ]


def test_certrenew_runs_with_the_name(tmp_path: Path) -> None:
    out = tmp_path / "renewed"

    async def main() -> None:
        hooks = Hooks([Command("certrenew", ("sh", "-c", f'echo "$MESHKIT_CERT_NAME" >> {out}'))])
        hub = CertHub()
        hub.on_renewed = lambda name: hooks.fire_soon("certrenew", {"MESHKIT_CERT_NAME": name})
        hub.renewed("a.test")
        for _ in range(200):
            if out.exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.gather(*hooks._tasks)

    asyncio.run(main())
    assert out.read_text() == "a.test\n"


def test_a_real_process_runs_them_once(tmp_path: Path) -> None:
    port = free_port()
    marks = tmp_path / "marks"
    (tmp_path / "index.html").write_text("hi\n")
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"127.0.0.1:{port} {{\n root {tmp_path}\n"
        f' startup sh -c "echo up >> {marks}; echo said-hello"\n'
        f" on startup sh -c 'sleep 0.3; echo late >> {marks}' &\n"
        f" shutdown sh -c 'echo down >> {marks}; exit 3'\n}}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if marks.exists() and "late" in marks.read_text():
                break
            time.sleep(0.05)
        assert marks.read_text() == "up\nlate\n"
        proc.signal(signal.SIGUSR1)  # a reload does not run startup again
        deadline = time.monotonic() + 20
        while "reload: done" not in proc.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload: done" in proc.stderr()
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert marks.read_text() == "up\nlate\ndown\n"
        err = proc.stderr()
        assert "startup: sh: said-hello" in err
        assert "exited with status 3" in err and "Caddyfile:5" in err
    finally:
        proc.stop()
