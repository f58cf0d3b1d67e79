"""cancel_and_wait: a job that loses a cancellation (as asyncio.wait_for does before Python 3.12
when its inner future finishes in the same loop turn) is cancelled again until it ends."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from meshkit.base import cancel
from meshkit.base.cancel import cancel_and_wait


def test_a_job_that_swallows_cancellations_still_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancel, "RETRY_AFTER", 0.01)
    seen: list[int] = []

    async def stubborn() -> None:
        # swallows the first two cancellations, as the health loop did after a lost one
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append(1)
                if len(seen) == 3:
                    raise

    async def body() -> None:
        job = asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(job), 10)
        assert job.cancelled()

    uvloop.run(body())
    assert len(seen) == 3


def test_finished_failed_and_missing_jobs_are_fine() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def body() -> None:
        await cancel_and_wait(None)
        job = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait(job)  # its exception is dropped, not raised here
        assert job.done()

    uvloop.run(body())


def test_the_callers_own_cancellation_propagates() -> None:
    async def body() -> None:
        async def forever() -> None:
            await asyncio.Event().wait()

        job = asyncio.get_running_loop().create_task(forever())
        waiter = asyncio.get_running_loop().create_task(cancel_and_wait(job))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        job.cancel()

    uvloop.run(body())
