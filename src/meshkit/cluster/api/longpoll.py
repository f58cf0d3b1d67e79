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
from collections.abc import Callable, Iterable


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


class KeyedSignal:
    """Like ChangeSignal, but each waiter waits under a key (a node id) and `notify(keys)` wakes
    only the waiters of those keys (None: every waiter).

    With thousands of nodes in a long poll, waking them all for every change that concerns a
    few (a task written for one new node) cost a task wake-up, a re-check and a new wait per
    node: tens of ms on the loop per change at 5,000 nodes."""

    def __init__(self) -> None:
        self._futs: dict[str, asyncio.Future[None]] = {}

    def notify(self, keys: Iterable[str] | None = None) -> None:
        """Wake the waiters of `keys` (all waiters when None); synchronous, as ChangeSignal's."""
        if keys is None:
            futs, self._futs = list(self._futs.values()), {}
        else:
            futs = [f for k in keys if (f := self._futs.pop(k, None)) is not None]
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, key: str, ready: Callable[[], bool], timeout: float) -> bool:
        """As ChangeSignal.wait_until, woken by a notify of `key` (or of all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                return False
            fut = self._futs.get(key)
            if fut is None or fut.done():
                fut = self._futs[key] = loop.create_future()
            await asyncio.wait((fut,), timeout=left)
        return True
