"""Waiting for a condition in the tests: one loop, two ways to end it."""

from __future__ import annotations

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
