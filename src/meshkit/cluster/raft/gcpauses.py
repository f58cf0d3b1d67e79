"""How long the cyclic garbage collector held this process (so, its event loop), and the
pacing that keeps full collections short on a manager.

A full collection walks every tracked object; a manager with thousands of nodes, their tasks
and their TLS connections has a million, and a collection on the loop is a stall with the CPU
busy that no profile of Python frames names (it is charged to whatever line allocated). While
5,000 nodes joined a global service, CPython ran a full collection every 3-5 s, each freeing
5-10 k objects of cyclic garbage (closed connections) and taking 50 ms at 1,000 nodes, 150 ms
at 3,000 and 250-350 ms at 5,000: the busy loop stalls over 100 ms were these.

`GcPacer`: every `FREEZE_EVERY` seconds the young generations are collected and whatever
survives is moved out of the collector's way (`gc.freeze()`), so an automatic full collection
only walks what was made since (short); every `RECLAIM_EVERY` seconds everything is put back
and collected once (`gc.unfreeze(); gc.collect()`), which frees the cyclic garbage that was
frozen meanwhile (without this it would leak) at the price of one full collection then.

Installed once per process by the raft store; `cluster_status` carries the figures
(`gc_max_ms`, `gc_pauses`; a reclaim is logged with its length).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

OVER = 0.02  # seconds: shorter collections are not worth keeping

FREEZE_EVERY = 10.0
"""Seconds between two freezes of what survived the young collections."""

RECLAIM_EVERY = 300.0
"""Seconds between two full collections of everything (frozen garbage is freed then)."""


class GcPauses:
    """The collections over `OVER` seconds: [monotonic time, ms, generation, objects freed, CPU
    ms of the collecting thread]. A collection that took long with little CPU was the host's
    doing (the thread waited for a CPU in the middle of it), not the collector's work."""

    KEEP = 128

    def __init__(self) -> None:
        self.worst = 0.0
        self.recent: deque[tuple[float, float, int, int, float]] = deque(maxlen=self.KEEP)
        self._began = 0.0
        self._began_cpu = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._began_cpu = time.thread_time()
            return
        took = time.perf_counter() - self._began
        if took > OVER:
            cpu = time.thread_time() - self._began_cpu
            self.worst = max(self.worst, took)
            gen = int(info.get("generation", -1))
            freed = int(info.get("collected", 0))
            self.recent.append((time.monotonic(), took, gen, freed, cpu))

    def status(self) -> dict[str, Any]:
        return {
            "gc_max_ms": round(self.worst * 1000, 1),
            "gc_pauses": [
                [round(t, 3), round(s * 1000, 1), g, n, round(c * 1000, 1)]
                for t, s, g, n, c in self.recent
            ],
        }


class GcPacer:
    """Freezes survivors every `FREEZE_EVERY` s, reclaims everything every `RECLAIM_EVERY` s;
    `tick(now)` is called from the loop (the raft tick) and is a comparison most of the time."""

    def __init__(self, now: float) -> None:
        install()  # cluster_status says how long collections held the loop
        self.next_freeze = now + FREEZE_EVERY
        self.next_reclaim = now + RECLAIM_EVERY
        self.reclaims = 0

    def tick(self, now: float) -> None:
        if now >= self.next_reclaim:
            self.next_reclaim = now + RECLAIM_EVERY
            self.next_freeze = now + FREEZE_EVERY
            began = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            self.reclaims += 1
            log.info(
                "garbage collection of everything: %d objects freed in %.0f ms",
                freed,
                (time.perf_counter() - began) * 1000,
            )
        elif now >= self.next_freeze:
            self.next_freeze = now + FREEZE_EVERY
            gc.collect(1)  # the young ones (a few ms): what dies young is not frozen
            gc.freeze()


_installed: GcPauses | None = None


def install() -> GcPauses:
    """The process's recorder, hooked into the collector on first use."""
    global _installed
    if _installed is None:
        _installed = GcPauses()
        gc.callbacks.append(_installed.callback)
    return _installed


def release(pacer: GcPacer | None) -> GcPacer | None:
    """A manager's store closed (a demoted manager): no pacer ticks any more, so what it froze,
    garbage included, goes back to the collector instead of staying frozen for the process's
    life. Returns None, the caller's pacer from now on."""
    if pacer is not None:
        gc.unfreeze()
    return None
