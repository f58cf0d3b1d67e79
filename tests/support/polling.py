"""Waiting for a condition in the tests: one polling loop, in the ways a test wants it to end
(the value, a yes/no, or an AssertionError naming what did not happen), and one for coroutines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def until(
    what: Callable[[], Any], timeout: float = 30.0, msg: str = "", interval: float = 0.2
) -> Any:
    """Call `what` until it returns something true, and return that; AssertionError (naming
    `msg` and the last value) when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = what()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {msg}: last {last!r}")


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Like `until`, but say how it ended: True once `pred` holds, else its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def _failure(what: str | Callable[[], str], timeout: float) -> AssertionError:
    return AssertionError(f"not within {timeout:g}s: {what() if callable(what) else what}")


def eventually(
    check: Callable[[], object],
    what: str | Callable[[], str],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `timeout` seconds
    (`what` may be a function, called then: e.g. to add what a process logged)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise _failure(what, timeout)
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], object],
    what: str | Callable[[], str],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    """`eventually` inside a coroutine: sleeps with asyncio.sleep, so the loop runs on."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise _failure(what, timeout)
        await asyncio.sleep(interval)
