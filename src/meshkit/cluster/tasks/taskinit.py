"""`--init`: a tiny init that runs a task's command and reaps the orphans of its processes.

Run as ``python -I -S taskinit.py EXECUTABLE ARGV0 ARGS...`` (standalone: only the standard
library, so it starts in a few ms without meshkit on the path). It makes itself a child
subreaper (prctl PR_SET_CHILD_SUBREAPER), so processes orphaned inside the task are re-parented
to it rather than to the node's init, starts the command, reaps every child that ends, and ends
the way the command ended: the same exit code, or the same signal. Signals sent to the task's
process group reach the command directly; the init only stays alive for them (a handler, not
SIG_IGN, which exec would pass on) until the command has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        os.write(2, b"taskinit: usage: taskinit EXECUTABLE ARGV0 [ARGS...]\n")
        return 127
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    main_pid = 0

    def forward(signum: int, _frame: object) -> None:
        # a signal sent to this process alone (not to the group) is passed to the command
        if main_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main_pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    executable, args = argv[0], argv[1:]
    main_pid = os.fork()
    if main_pid == 0:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execv(executable, args)
        except OSError as exc:
            os.write(2, f"taskinit: exec {executable}: {exc.strerror}\n".encode())
            os._exit(127)
    status = 0
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if pid == main_pid:
            status = st
            break
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
