"""How long the cyclic garbage collector held this process (so, its event loop).

A full collection walks every tracked object; a manager holding thousands of nodes and tasks
has millions, and a collection on the loop is a stall with the CPU busy that no profile of
Python frames names (it is charged to whatever line allocated). Installed once per process by
the raft store; `cluster_status` carries the figures (`gc_max_ms`, `gc_pauses`).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

OVER = 0.02  # seconds: shorter collections are not worth keeping


class GcPauses:
    """The collections over `OVER` seconds: [monotonic time, ms, generation, objects freed]."""

    KEEP = 128

    def __init__(self) -> None:
        self.worst = 0.0
        self.recent: deque[tuple[float, float, int, int]] = deque(maxlen=self.KEEP)
        self._began = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        if took > OVER:
            self.worst = max(self.worst, took)
            gen = int(info.get("generation", -1))
            self.recent.append((time.monotonic(), took, gen, int(info.get("collected", 0))))

    def status(self) -> dict[str, Any]:
        return {
            "gc_max_ms": round(self.worst * 1000, 1),
            "gc_pauses": [[round(t, 3), round(s * 1000, 1), g, n] for t, s, g, n in self.recent],
        }


_installed: GcPauses | None = None


def install() -> GcPauses:
    """The process's recorder, hooked into the collector on first use."""
    global _installed
    if _installed is None:
        _installed = GcPauses()
        gc.callbacks.append(_installed.callback)
    return _installed
