"""Blocking work (an ACME order, an OCSP request) off the event loop, in a daemon thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_daemon_thread"]

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a daemon thread of its own: an order waiting on a silent CA (up to
    -catimeout per request) neither holds the loop nor keeps the process from exiting on
    SIGTERM, as a thread of the default executor would (it is joined at exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done, result, None)

    threading.Thread(target=run, name="meshkit-acme", daemon=True).start()
    return await fut
