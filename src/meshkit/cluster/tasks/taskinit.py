"""`--init`: a tiny init that runs a task's command and reaps the orphans of its processes.

Run as ``python -I -S taskinit.py EXECUTABLE ARGV0 ARGS...`` (standalone: only the standard
library, so it starts in a few ms without meshkit on the path). It makes itself a child
subreaper (prctl PR_SET_CHILD_SUBREAPER), so processes orphaned inside the task are re-parented
to it rather than to the node's init, starts the command, reaps every child that ends, and ends
the way the command ended: the same exit code, or the same signal. The agent signals a task's
whole process group, so the command gets each signal once, directly; the init passes none on
(a second SIGINT or SIGTERM means "now" to many programs) and only stays alive through them
(a handler that does nothing, not SIG_IGN, which exec would pass on) until the command ended.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
STAYED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        os.write(2, b"taskinit: usage: taskinit EXECUTABLE ARGV0 [ARGS...]\n")
        return 127
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def stay(_signum: int, _frame: object) -> None:
        """The group's signal reached the command as well: nothing to do here."""

    for sig in STAYED:
        signal.signal(sig, stay)
    executable, args = argv[0], argv[1:]
    main_pid = os.fork()
    if main_pid == 0:
        for sig in STAYED:
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
