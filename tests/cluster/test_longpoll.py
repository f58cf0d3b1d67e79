"""The long polls' wake-up (meshkit.cluster.api.longpoll) and the storm that broke the old
asyncio.Condition one on CPython 3.11: many watches with tiny waits timing out while changes
are notified in a tight loop and the RPC server cancels some of them (a closed connection).
With the Condition this raised "RuntimeError: Lock is not acquired" and could leave the lock
taken so that later watches hung."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from meshkit.cluster.api.longpoll import ChangeSignal
from meshkit.cluster.api.services import ServiceMethods
from meshkit.cluster.model import state as cs
from meshkit.cluster.rpc.pki import PeerIdentity
from meshkit.cluster.rpc.transport import Peer

M1, W1 = "m" * 25, "w" * 25


class _Node:
    """The little of a NodeContext that tasks_watch uses."""

    def __init__(self) -> None:
        st = cs.ClusterState()
        node = cs.NodeRecord(id=M1, hostname="m1", role="manager", addr="198.18.0.1")
        cs.apply(st, {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node.to_dict()})
        rec = cs.NodeRecord(id=W1, hostname="w1", role="worker", addr="198.18.0.2")
        cs.apply(st, {"op": "add_node", "node": rec.to_dict()})
        self.state = st


def test_the_signal_answers_at_once_on_change_or_after_the_wait() -> None:
    async def run() -> None:
        sig = ChangeSignal()
        box = {"v": 0}
        assert await sig.wait_until(lambda: True, 10.0)  # already ready: no wait at all
        assert not await sig.wait_until(lambda: box["v"] == 1, 0.01)  # nothing moved
        waiter = asyncio.create_task(sig.wait_until(lambda: box["v"] == 1, 10.0))
        other = asyncio.create_task(sig.wait_until(lambda: box["v"] == 1, 10.0))
        await asyncio.sleep(0)
        sig.notify()  # a change the waiters are not waiting for: they wait on
        await asyncio.sleep(0)
        assert not waiter.done() and not other.done()
        other.cancel()  # a cancelled waiter does not disturb the others
        await asyncio.sleep(0)
        box["v"] = 1
        sig.notify()
        assert await asyncio.wait_for(waiter, 5.0)
        assert other.cancelled()

    asyncio.run(run())


def test_a_storm_of_timing_out_and_cancelled_watches_breaks_nothing() -> None:
    rng = random.Random(7)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        api = ServiceMethods(_Node())  # type: ignore[arg-type]
        peer = Peer(identity=PeerIdentity(W1, "worker", "c" * 25), address="x")

        def watch(wait: float) -> asyncio.Task[Any]:
            params = {"node_id": W1, "epoch": api.epoch, "wait": wait}
            params["version"] = api.version_for(W1)
            return asyncio.create_task(api.tasks_watch(peer, params))

        tasks: set[asyncio.Task[Any]] = set()
        for i in range(4000):
            tasks.add(watch(rng.choice([0.0005, 0.001, 0.002])))
            if i % 5 == 0:
                api.applied({"op": "leave"})  # moves every node's version
            if i % 3 == 0:
                await asyncio.sleep(0.0002)
                live = sorted((t for t in tasks if not t.done()), key=id)
                for t in rng.sample(live, min(3, len(live))):
                    t.cancel()  # what the RPC server does to a closed connection's requests
        done, pending = await asyncio.wait(tasks, timeout=10)
        assert not pending, f"{len(pending)} watches never answered"
        errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
        assert not errors, {repr(e) for e in errors}
        assert not loop_errors, loop_errors[:3]
        # and the next watch still waits, then answers on a change
        later = watch(10.0)
        await asyncio.sleep(0.01)
        assert not later.done()
        api.applied({"op": "leave"})
        reply = await asyncio.wait_for(later, 5.0)
        assert reply["version"] == api.version_for(W1)

    # not asyncio.run: its cancel-and-gather of leftover tasks would never end if a watch were
    # stuck on a leaked lock (as with the old Condition); the test must fail, not hang
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


def test_a_change_wakes_its_waiters_a_batch_per_loop_turn() -> None:
    """Thousands of watchers woken by one change answer over several loop turns, so the loop
    reads other sockets between batches (a raft entry of 200 tasks woke 200 at once)."""
    from meshkit.cluster.api.longpoll import WAKE_BATCH, KeyedSignal, wake

    async def run() -> None:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[None]] = [loop.create_future() for _ in range(2 * WAKE_BATCH + 5)]
        wake(futs)
        assert sum(f.done() for f in futs) == WAKE_BATCH
        await asyncio.sleep(0)
        assert sum(f.done() for f in futs) == 2 * WAKE_BATCH
        await asyncio.sleep(0)
        assert all(f.done() for f in futs)
        # through the signals: every waiter is answered, none left registered
        keyed, plain = KeyedSignal(), ChangeSignal()
        moved = {"v": False}
        keys = [f"n{i}" for i in range(3 * WAKE_BATCH)]
        waiters = [
            asyncio.create_task(keyed.wait_until(k, lambda: moved["v"], 30.0)) for k in keys
        ] + [asyncio.create_task(plain.wait_until(lambda: moved["v"], 30.0)) for _ in keys]
        await asyncio.sleep(0)
        moved["v"] = True
        keyed.notify(keys)
        plain.notify()
        assert all(await asyncio.wait_for(asyncio.gather(*waiters), 10))
        assert plain._futs == set() and keyed._futs == {}
        # a waiter that times out or is cancelled takes its future out again
        assert not await plain.wait_until(lambda: False, 0.01)
        t = asyncio.create_task(plain.wait_until(lambda: False, 30.0))
        await asyncio.sleep(0)
        assert len(plain._futs) == 1
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
        assert plain._futs == set()

    asyncio.run(run())
