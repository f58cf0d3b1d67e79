"""The wake-up of the API's long polls (tasks_watch, netmap_watch, webcert_watch), without a lock.

The watches used to hold an asyncio.Condition and `wait_for(cond.wait_for(...), wait)`. On
CPython 3.11 that breaks under load: when the wait times out, wait_for cancels the inner
Condition.wait, which must then re-acquire the lock; if the handler itself is cancelled in that
window (the RPC server cancels a connection's requests when it closes) the `async with` exits
while the lock is not held: "RuntimeError: Lock is not acquired", or worse the lock stays taken
and every later watch blocks on it. A watch needs no mutual exclusion, only "wake me when the
version moves", so this is a future resolved on each change, which only its own waiter ever
cancels, and nothing is acquired or released. A change wakes its waiters `WAKE_BATCH` per loop
turn (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable

WAKE_BATCH = 64
"""Waiters woken per loop turn. A change that concerns thousands of watchers (a raft entry of
200 new tasks, a network map every node watches) woke them all in one turn, and their replies
(each a JSON encode and a TLS write) then ran back to back: one loop turn of 100-400 ms on a
manager while 5,000 nodes joined. Waking them 64 at a time lets the loop read heartbeats and
raft between the batches; the work is the same."""


def wake(futs: list[asyncio.Future[None]]) -> None:
    """Resolve `futs`, `WAKE_BATCH` per loop turn (all at once without a running loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    now, rest = (futs, []) if loop is None else (futs[:WAKE_BATCH], futs[WAKE_BATCH:])
    for fut in now:
        if not fut.done():
            fut.set_result(None)
    if rest and loop is not None:
        loop.call_soon(wake, rest)


TIMEOUT_GRAIN = 0.25
"""Long polls time out on multiples of this many seconds of the loop's clock (up to this much
late): with thousands of nodes polling, the timeouts that fall in the same quarter second
are answered in one loop wake-up instead of one wake-up each (a wake-up, not the reply, was
most of a poll's cost on a manager)."""


async def wait_for_future(fut: asyncio.Future[None], timeout: float) -> None:
    """Wait until `fut` is done or `timeout` passes, never cancelling `fut` (others share it).

    What `asyncio.wait((fut,), timeout=...)` does, without its sets, task checks and the
    callbacks it adds and removes: a long poll's wait was 13 % of a manager's busy loop with
    2,000 nodes watching their tasks."""
    if fut.done():
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def release(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(release)
    due = math.ceil((loop.time() + timeout) / TIMEOUT_GRAIN) * TIMEOUT_GRAIN
    timer = loop.call_at(due, release)
    try:
        await waiter
    finally:
        timer.cancel()
        with contextlib.suppress(ValueError):
            fut.remove_done_callback(release)


class ChangeSignal:
    """Wakes every waiter once per `notify()`; waiters re-check their own condition."""

    def __init__(self) -> None:
        # each waiter's own future (made on the loop it waits on), so that a notify can wake
        # them a batch per loop turn; a waiter that times out takes its future out again
        self._futs: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        """Wake all current waiters (synchronous: call it right after the version moved)."""
        futs, self._futs = list(self._futs), set()
        wake(futs)

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Return True as soon as `ready()` holds (at once if it already does), False after
        `timeout` seconds without it. Checking `ready()` and registering the waiter happen
        in one loop step, so a notify cannot fall between them and be lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            self._futs.add(fut)
            try:
                await wait_for_future(fut, left)
            finally:
                self._futs.discard(fut)
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
        wake(futs)

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
            await wait_for_future(fut, left)
        return True
