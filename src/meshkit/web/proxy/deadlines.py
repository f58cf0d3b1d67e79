"""Deadlines of exchanges in flight, checked by one periodic sweep instead of a timer each.

A loop.call_later per request costs a timer-heap insert and a cancel on the hot path; a sweep
every TICK seconds while anything is watched costs nothing per request beyond a set insert.
Deadlines therefore fire up to TICK late. Used by the proxy's upstream connections and by
the FastCGI client's.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["TICK", "Deadlines", "Timed"]

TICK = 0.25  # seconds between sweeps while exchanges are in flight


class Timed(Protocol):
    """An exchange with a deadline; time_out() fails it."""

    deadline: float
    timeout: float

    def time_out(self) -> None: ...


class Deadlines:
    """The deadlines of the exchanges in flight: one watched past its deadline is failed
    with its time_out()."""

    __slots__ = ("_handle", "_loop", "watched")

    def __init__(self) -> None:
        self.watched: set[Timed] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, item: Timed, timeout: float) -> None:
        """Time `item` out unless it is unwatched within `timeout` seconds."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        item.deadline = loop.time() + timeout
        item.timeout = timeout
        self.watched.add(item)
        if self._handle is None:
            self._handle = loop.call_later(TICK, self._sweep, loop)

    def unwatch(self, item: Timed) -> None:
        self.watched.discard(item)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [item for item in self.watched if item.deadline <= now]
        for item in late:
            self.watched.discard(item)
            item.time_out()
        self._handle = loop.call_later(TICK, self._sweep, loop) if self.watched else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.watched.clear()
