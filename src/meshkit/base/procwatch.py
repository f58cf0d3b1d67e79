"""Waiting on the loop for a process to end, child or not, through a pidfd.

A pidfd becomes readable when its process exits (a zombie counts), so the same wait serves a
task the agent started (reaped afterwards with waitpid) and one a previous agent started and
this one adopted (reaped by init). Holding the pidfd does not keep the pid from being reused
once the process is reaped, so callers signal only processes they know to be unreaped.
"""

from __future__ import annotations

import asyncio
import os


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None when the process is already gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def wait_pidfd(pidfd: int) -> None:
    """Return once the process of ``pidfd`` has exited; the caller keeps and closes the fd."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, ready)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)


async def wait_exit(pid: int) -> None:
    """Return once ``pid`` has exited (at once when it is already gone)."""
    pidfd = open_pidfd(pid)
    if pidfd is None:
        return
    try:
        await wait_pidfd(pidfd)
    finally:
        os.close(pidfd)
