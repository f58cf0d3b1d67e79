"""The wake-up of the API's long polls (tasks_watch, netmap_watch, webcert_watch), without a lock.

The watches used to hold an asyncio.Condition and `wait_for(cond.wait_for(...), wait)`. On
CPython 3.11 that breaks under load: when the wait times out, wait_for cancels the inner
Condition.wait, which must then re-acquire the lock; if the handler itself is cancelled in that
window (the RPC server cancels a connection's requests when it closes) the `async with` exits
while the lock is not held: "RuntimeError: Lock is not acquired", or worse the lock stays taken
and every later watch blocks on it. A watch needs no mutual exclusion, only "wake me when the
version moves", so this is a future swapped on each change: waiters share it through
asyncio.wait, which never cancels it, and nothing is acquired or released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ChangeSignal:
    """Wakes every waiter once per `notify()`; waiters re-check their own condition."""

    def __init__(self) -> None:
        # made lazily: the owner is built before the loop runs, and a future belongs to one loop
        self._fut: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """Wake all current waiters (synchronous: call it right after the version moved)."""
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Return True as soon as `ready()` holds (at once if it already does), False after
        `timeout` seconds without it. Checking `ready()` and taking the current future happen
        in one loop step, so a notify cannot fall between them and be lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._fut is None:
                self._fut = loop.create_future()
            await asyncio.wait((self._fut,), timeout=left)
        return True
