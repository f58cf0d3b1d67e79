"""Running a node's agent from the CLI: in the foreground, or detached (`--detach`) with its
pid and log in the data dir, the parent waiting for the agent to say it is up (or why not)."""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshkit.base.errors import MeshkitError


def run_agent(
    make_agent: Callable[[Callable[[Any], None]], Any],
    ready_text: Callable[[Any], str],
    data_dir: Path,
    detach: bool,
    log_level: str,
) -> None:
    """Run the agent in the foreground, or detached with a pid and a log file."""
    from meshkit.base.files import write_private
    from meshkit.cli import run_loop, setup_logging

    if not detach:
        setup_logging(log_level)

        def on_ready(agent: Any) -> None:
            sys.stdout.write(ready_text(agent))
            sys.stdout.flush()

        run_loop(make_agent(on_ready).run())
        return

    log_path = data_dir / "agent.log"
    pid_path = data_dir / "agent.pid"
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        os.waitpid(pid, 0)
        chunks: list[bytes] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([rfd], [], [], 1.0)
            if ready:
                data = os.read(rfd, 65536)
                if not data:
                    break
                chunks.append(data)
        os.close(rfd)
        text = b"".join(chunks).decode(errors="replace")
        if text.startswith("ok\n"):
            sys.stdout.write(text[3:])
            sys.stdout.flush()
            return
        raise MeshkitError(
            (text[len("error\n") :].strip() if text.startswith("error\n") else "")
            or f"the agent did not start; see {log_path}"
        )
    # First child: a new session, then the agent in a grandchild nobody waits for.
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        write_private(pid_path, f"{os.getpid()}\n")
        setup_logging(log_level)
        sent = False

        def on_ready(agent: Any) -> None:
            nonlocal sent
            if sent:  # a locked manager said so first; its later start is in the log
                return
            os.write(wfd, ("ok\n" + ready_text(agent)).encode())
            os.close(wfd)
            sent = True

        try:
            run_loop(make_agent(on_ready).run())
        except BaseException as exc:
            code = 1
            if not sent:
                os.write(wfd, f"error\n{exc}".encode())
                os.close(wfd)
            raise
    except BaseException:
        import traceback

        traceback.print_exc()
        code = code or 1
    finally:
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except OSError:
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
