"""Cancelling a task and waiting until it really ended.

Before Python 3.12, ``asyncio.wait_for`` loses a cancellation that arrives in the same loop turn
as its inner future's result (gh-86296): the cancelled task returns to its loop as if nothing
happened. A supervisor that cancels a periodic job (a health check probing every 50 ms) once and
then awaits it would wait for ever; this was seen under load in CI. `cancel_and_wait` cancels
again until the job is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]

# how long one cancellation is given before it is repeated: long enough for a job's own
# cleanup (a probe's SIGKILL and reap), short enough that a lost one costs little
RETRY_AFTER = 0.5


async def cancel_and_wait(job: asyncio.Future[Any] | None) -> None:
    """Cancel ``job`` (repeatedly, if a cancellation is lost) and wait until it is done; its
    result or exception is dropped. A cancellation of the caller still propagates."""
    if job is None:
        return
    while not job.done():
        job.cancel()
        await asyncio.wait({job}, timeout=RETRY_AFTER)
    with contextlib.suppress(BaseException):
        job.result()
