"""The process of a one-off task (`meshkit run`), started by the CLI itself in the namespace the
agent made for it (meshkit.cluster.api.runs).

It is launched as a task is (meshkit.cluster.tasks.process: the program found on PATH, a
minimal environment plus ``--env``, the namespace entered and resolv.conf bound over
/etc/resolv.conf in a mount namespace of its own) but keeps the CLI's terminal: with ``-t``
it runs in the CLI's process group on the CLI's terminal (the terminal's Ctrl-C reaches it);
without, it gets a process group of its own and the CLI forwards SIGINT, SIGTERM, SIGHUP and
SIGQUIT to it, and its output goes through pipes when the CLI's is a terminal (so the command
sees no terminal, as with `docker run` without -t). ``-i`` (or ``-t``: the terminal is all
three of its streams, as Docker's pty is) gives it the CLI's stdin, else /dev/null. The exit
code is the command's (128 + N for signal N).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import IO

from meshkit.cluster.tasks import process as taskproc

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def plan(argv: Sequence[str], env: Sequence[str], hostname: str, tty: bool) -> taskproc.LaunchPlan:
    """LaunchError says why the command cannot start (not found: exit 127, as a shell)."""
    spec = {"command": list(argv), "env": list(env)}
    found = taskproc.plan_launch(spec, hostname)
    if tty and "TERM" not in found.env:
        found.env["TERM"] = os.environ.get("TERM") or "xterm"
    return found


def agent_path(agent_pid: int, path: str) -> str:
    """``path`` as the agent sees it (its mount namespace may not be ours)."""
    return f"/proc/{agent_pid}/root{path}"


@contextlib.contextmanager
def resolv_conf(agent_pid: int, netns: str) -> Iterator[str | None]:
    """The namespace's resolv.conf, as a file this process may bind: the agent's own under
    /etc/netns when we see the same /etc, else a private copy (a file of another mount
    namespace cannot be bound here)."""
    local = f"/etc/netns/{netns}/resolv.conf"
    if os.path.isfile(local):
        yield local
        return
    try:
        with open(agent_path(agent_pid, local), "rb") as f:
            data = f.read()
    except OSError:
        yield None
        return
    with tempfile.NamedTemporaryFile(prefix="meshkit-run-resolv-") as tmp:
        tmp.write(data)
        tmp.flush()
        os.chmod(tmp.name, 0o644)
        yield tmp.name


def _copy(src: IO[bytes], dst: int) -> None:
    try:
        while chunk := os.read(src.fileno(), 65536):
            os.write(dst, chunk)
    except OSError:
        pass
    finally:
        src.close()


def _saying(setup: Callable[[], None], own_group: bool) -> Callable[[], None]:
    """A preexec_fn that writes why it failed (Popen only says that it did); with
    ``own_group`` the child leads a process group of its own first."""

    def run() -> None:
        for sig in FORWARDED:  # ignored here (with -t) would stay ignored across exec
            signal.signal(sig, signal.SIG_DFL)
        try:
            if own_group:
                os.setpgid(0, 0)
            setup()
        except OSError as exc:
            os.write(2, f"meshkit: {exc}\n".encode())
            raise

    return run


def run(
    launch: taskproc.LaunchPlan,
    *,
    netns: str | None,
    resolv: str | None,
    interactive: bool,
    tty: bool,
) -> int:
    """Start the command, wait for it, give its exit code."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if netns else None
    resolv_b = os.fsencode(resolv) if resolv and os.path.isfile(resolv) else None
    pipes = {n: not tty and os.isatty(n) for n in (1, 2)}
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []  # signals that came before the command existed

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
            return
        try:
            if tty:
                os.kill(child.pid, signum)
            else:
                os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    # installed before the command starts, so that a signal right after it did is not lost
    before = {}
    for sig in FORWARDED:
        # with -t the terminal signals the command's group (ours) itself: only forward TERM
        handler = forward if (not tty or sig == signal.SIGTERM) else signal.SIG_IGN
        before[sig] = signal.signal(sig, handler)
    try:
        try:
            child = subprocess.Popen(
                launch.argv,
                executable=launch.executable,
                stdin=None if interactive or tty else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes[1] else None,
                stderr=subprocess.PIPE if pipes[2] else None,
                cwd=launch.cwd,
                env=launch.env,
                close_fds=True,
                preexec_fn=_saying(taskproc._child_setup(fd, launch.identity, resolv_b), not tty),
            )
        except OSError as exc:
            raise taskproc.LaunchError(f"exec: {launch.argv[0]!r}: {exc.strerror or exc}") from None
        except subprocess.SubprocessError as exc:
            raise taskproc.LaunchError(
                f"could not enter the task's network namespace: {exc}"
            ) from None
        finally:
            if fd is not None:
                os.close(fd)
        copiers = []
        for n, stream in ((1, child.stdout), (2, child.stderr)):
            if stream is not None:
                t = threading.Thread(target=_copy, args=(stream, n), daemon=True)
                t.start()
                copiers.append(t)
        for signum in pending:
            forward(signum, None)
        code = child.wait()
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)
    for t in copiers:
        t.join(5)
    sys.stdout.flush()
    return taskproc.exit_code_of(code)
