"""How long the cyclic garbage collector held this process (so, its event loop), and the
pacing that keeps full collections short on a manager.

A full collection walks every tracked object; a manager with thousands of nodes, their tasks
and their TLS connections has a million, and a collection on the loop is a stall with the CPU
busy that no profile of Python frames names (it is charged to whatever line allocated). While
5,000 nodes joined a global service, CPython ran a full collection every 3-5 s, each freeing
5-10 k objects of cyclic garbage (closed connections) and taking 50 ms at 1,000 nodes, 150 ms
at 3,000 and 250-350 ms at 5,000: the busy loop stalls over 100 ms were these.

`GcPacer`: CPython never starts a full collection by itself while it runs; every
`FREEZE_EVERY` seconds it collects what is not frozen (only what was made since the last
freeze: short) and moves whatever survives out of the collector's way (`gc.freeze()`). A full
collection of everything never runs on the loop: what becomes cyclic garbage after it was
frozen stays (a leak). So the frozen set is audited in a forked child, which collects
everything on a copy-on-write view of the process and says how many objects it would free, by
type and by the functions that made them: the raft dump writer's child does it after writing
its dump (`audit_to_file`, at most every `AUDIT_GAP` seconds; the fork is paid anyway), and the
pacer forks one of its own (`GcAudit`) only after `AUDIT_EVERY` seconds without one. The
manager logs each audit and shows it in `cluster_status` (``gc_audit``, with the resident
memory), so a cycle that leaks is named and fixed where it is made (closed RPC connections
were: rpc/tlsaccept.py, rpc/server.py). Only past `RECLAIM_OVER` objects of frozen garbage
does the loop pay for one full collection (a stall, logged as a warning): memory stays
bounded whatever leaks.

Installed once per process by the raft store; `cluster_status` carries the figures
(`gc_max_ms`, `gc_pauses`; a reclaim is logged with its length).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import time
import types as types_mod
from collections import Counter, deque
from typing import Any

log = logging.getLogger(__name__)

OVER = 0.02  # seconds: shorter collections are not worth keeping

FREEZE_EVERY = 1.0
"""Seconds between two freezes; each first collects what is not frozen yet (all of it was
made since the last freeze, so the collection is short) and then freezes what survived."""

NEVER = 1 << 30
"""The oldest generation's threshold while a pacer runs: CPython never starts a full
collection by itself."""

AUDIT_EVERY = 1800.0
"""Seconds without an audit after which the pacer forks one of its own (`GcAudit`). Audits
come with the raft log's compactions (every 500 entries or 10 minutes): the dump writer's
child, forked anyway, audits after writing the dump. A fork of its own costs the manager
about 100 ms of loop stalls at 5,000 nodes (copy-on-write faults on every page it then
writes), so it is only the fallback for a store that compacts nothing."""

AUDIT_GAP = 300.0
"""Seconds between two audits in dump writers' children at least (an audit costs the child
1-1.5 s of CPU at 5,000 nodes, counted as the manager's; dumps may come every minute)."""

_last_audit = -AUDIT_GAP  # monotonic time of the last audit this process took in
_pacers = 0  # pacers running in this process (a test runs several stores in one)
_thresholds = gc.get_threshold()  # CPython's own, put back when the last pacer closes


def audit_due() -> bool:
    """Whether the next raft dump's child should audit (`AUDIT_GAP` since the last)."""
    return time.monotonic() - _last_audit >= AUDIT_GAP


AUDIT_TIMEOUT = 300.0
"""An audit child that has not answered by then is killed (and the audit noted as failed)."""

RECLAIM_OVER = 200_000
"""Frozen cyclic garbage (objects, about 30 MB) past which the loop pays for a full collection
(or a tenth of the frozen set, if more): memory stays bounded even if a cycle leaks."""


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
        self.total_cpu = 0.0  # seconds of CPU in every collection (the collector's share)

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._began_cpu = time.thread_time()
            return
        took = time.perf_counter() - self._began
        cpu = time.thread_time() - self._began_cpu
        self.total_cpu += cpu
        if took > OVER:
            self.worst = max(self.worst, took)
            gen = int(info.get("generation", -1))
            freed = int(info.get("collected", 0))
            self.recent.append((time.monotonic(), took, gen, freed, cpu))

    def status(self) -> dict[str, Any]:
        return {
            "gc_max_ms": round(self.worst * 1000, 1),
            "gc_cpu_ms": round(self.total_cpu * 1000, 1),
            "gc_pauses": [
                [round(t, 3), round(s * 1000, 1), g, n, round(c * 1000, 1)]
                for t, s, g, n, c in self.recent
            ],
        }


class GcPacer:
    """Freezes survivors every `FREEZE_EVERY` s and audits the frozen set every `AUDIT_EVERY` s
    in a forked child (`GcAudit`); never runs a full collection on the loop unless an audit
    finds more frozen garbage than `reclaim_over()` (a leak: memory first, then the stall).
    `tick(now)` is called from the loop (the raft tick) and is a comparison most of the time."""

    def __init__(self, now: float, audit_file: str | None = None) -> None:
        install()  # cluster_status says how long collections held the loop
        self.next_freeze = now + FREEZE_EVERY
        self.next_audit = now + AUDIT_EVERY
        self.audit_file = audit_file  # where the raft dump writer's child leaves its audit
        self._audit_seen = _mtime(audit_file)
        self.reclaims = 0
        self.audit: GcAudit | None = None  # the one running
        self.last: dict[str, Any] | None = None  # the last audit's figures
        # no automatic full collection: it would walk what is not frozen yet, all of it made
        # since the last freeze (80-170 ms of CPU at 10 s between freezes while 5,000 nodes
        # joined); the pacer collects that part itself, a second's worth at a time
        global _pacers, _thresholds
        if _pacers == 0:
            _thresholds = gc.get_threshold()
            gc.set_threshold(_thresholds[0], _thresholds[1], NEVER)
        _pacers += 1
        self._closed = False

    def tick(self, now: float) -> None:
        if self.audit is not None:
            found = self.audit.poll(now)
            if found is not None:
                self.audit = None
                self._audited(found)
        if now >= self.next_audit and self.audit is None:
            self.next_audit = now + AUDIT_EVERY
            self.audit = GcAudit.start(now)
        elif now >= self.next_freeze:
            self.next_freeze = now + FREEZE_EVERY
            gc.collect()  # what is not frozen: made in the last second or so (a few ms)
            gc.freeze()
            self._dump_audit(now)

    def _dump_audit(self, now: float) -> None:
        """The audit a raft dump's child left (once a second: one stat); it stands for one of
        ours, which waits `AUDIT_EVERY` from now."""
        seen = _mtime(self.audit_file)
        if seen == self._audit_seen or self.audit_file is None:
            return
        self._audit_seen = seen
        try:
            with open(self.audit_file, "rb") as f:
                found: dict[str, Any] = json.loads(f.read())
        except (OSError, ValueError):
            return
        found["fork_ms"] = "dump"
        self.next_audit = now + AUDIT_EVERY
        self._audited(found)

    @staticmethod
    def reclaim_over(frozen: int) -> int:
        """Frozen garbage (objects) past which a full collection is worth its stall, for a
        frozen set of `frozen` objects (the child's count: ``gc.get_freeze_count()`` walks the
        whole frozen list, 105 ms on the loop of a 5,000-node manager)."""
        return max(RECLAIM_OVER, frozen // 10)

    def _audited(self, found: dict[str, Any]) -> None:
        global _last_audit
        _last_audit = time.monotonic()
        found["rss_mb"] = round(rss_mb(), 1)
        found["at"] = round(time.monotonic(), 3)
        self.last = found
        garbage = int(found.get("garbage", -1))
        if garbage < 0:
            log.warning("garbage audit failed: %s", found.get("error", "no answer"))
            return
        log.info(
            "garbage audit: %d frozen objects, %d of them cyclic garbage (%s); rss %.0f MB",
            found.get("frozen", 0),
            garbage,
            ", ".join(f"{k} {v}" for k, v in list(found.get("types", {}).items())[:6]),
            found["rss_mb"],
        )
        bound = self.reclaim_over(int(found.get("frozen", 0)))
        if garbage > bound:
            began = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            self.reclaims += 1
            log.warning(
                "frozen cyclic garbage over %d objects: collected everything (%d freed) in %.0f "
                "ms on the event loop; the types above make cycles that should not be",
                bound,
                freed,
                (time.perf_counter() - began) * 1000,
            )

    def close(self) -> None:
        global _pacers
        if not self._closed:
            self._closed = True
            _pacers -= 1
            if _pacers == 0:  # the last pacer of the process: CPython paces itself again
                gc.set_threshold(*_thresholds)
        if self.audit is not None:
            self.audit.abandon()
            self.audit = None

    def status(self) -> dict[str, Any]:
        return {"gc_audit": self.last, "gc_reclaims": self.reclaims}


class GcAudit:
    """One forked child that puts the frozen objects back, collects everything with
    ``DEBUG_SAVEALL`` and writes back how much was cyclic garbage, by type: what a full
    collection would free in this process, found without stalling it. The child's collection
    runs the garbage's finalizers, so it first closes every descriptor but its pipe (a
    finalizer in the child cannot write to a connection or file the manager shares) and logs
    nothing; it leaves with ``os._exit``."""

    def __init__(self, pid: int, rfd: int, began: float, fork_ms: float = 0.0) -> None:
        self.pid, self.rfd, self.began = pid, rfd, began
        self.fork_ms = fork_ms  # how long os.fork() held the loop (page tables copied)
        self.data = b""

    @classmethod
    def start(cls, now: float) -> GcAudit | None:
        rfd, wfd = os.pipe()
        forking = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(rfd)
            os.close(wfd)
            log.warning("garbage audit: cannot fork: %s", exc)
            return None
        if pid == 0:  # pragma: no cover - the child (its result is what the tests check)
            _audit_child(wfd)
        os.close(wfd)
        os.set_blocking(rfd, False)
        return cls(pid, rfd, now, round((time.perf_counter() - forking) * 1000, 1))

    def poll(self, now: float) -> dict[str, Any] | None:
        """The child's figures once it has exited (None while it runs)."""
        self._drain()
        pid, _ = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            if now - self.began > AUDIT_TIMEOUT:
                self.abandon()
                return {"garbage": -1, "error": f"no answer within {AUDIT_TIMEOUT:.0f} s"}
            return None
        self._drain()
        os.close(self.rfd)
        try:
            found: dict[str, Any] = json.loads(self.data)
        except ValueError:
            return {"garbage": -1, "error": "the audit child died"}
        found["fork_ms"] = self.fork_ms
        found["took_s"] = round(now - self.began, 1)
        return found

    def _drain(self) -> None:
        """Read what the child wrote so far (its pipe never blocks the loop)."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.rfd, 65536):
                self.data += chunk

    def abandon(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.rfd)


def _audit_child(wfd: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        os.write(wfd, json.dumps(audit_figures(keep=wfd)).encode())
    finally:
        os._exit(0)


def audit_to_file(path: str) -> None:
    """In a forked child about to exit (the raft dump writer's, `lib.DumpWriter`, which has
    paid for the fork and the copied pages already): the audit, written to `path` (0600,
    atomically), where the manager's pacer picks it up (`GcPacer`'s ``audit_file``)."""
    data = json.dumps(audit_figures()).encode()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def audit_figures(keep: int = -1) -> dict[str, Any]:
    """What a full collection would free in this process, by type (see `GcAudit`). Only in a
    forked child that exits next: it closes every descriptor above 2 but `keep` first (the
    collection runs the garbage's finalizers, which must not touch the parent's connections
    or files), logs nothing, and collects everything, frozen objects included."""
    # the child must not take the CPU from the manager it audits (at the manager's own
    # priority, on the same core, an audit starved its loop for 400 ms); nice 19, not
    # SCHED_IDLE, which on a busy core never got to run
    with contextlib.suppress(OSError):
        os.nice(19)
    logging.disable(logging.CRITICAL)
    if keep >= 3:
        os.closerange(3, keep)
    os.closerange(max(keep + 1, 3), 1 << 20)
    gc.callbacks.clear()
    frozen = gc.get_freeze_count()
    began = time.perf_counter()
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)  # kept in gc.garbage (so counted by type), not freed
    garbage = gc.collect()
    took = time.perf_counter() - began
    types = Counter(type(o).__qualname__ for o in gc.garbage)
    # which code made the cycles: the functions (closures) and coroutines among them, and
    # what a few of the garbage futures were waiting for
    funcs = Counter(
        getattr(o, "__qualname__", "?")
        for o in gc.garbage
        if isinstance(o, types_mod.FunctionType | types_mod.CoroutineType)
    )
    futures = [repr(o)[:300] for o in gc.garbage if type(o).__name__ == "Future"][:3]
    return {
        "garbage": garbage,
        "frozen": frozen,
        "full_ms": round(took * 1000, 1),
        "types": dict(types.most_common(12)),
        "functions": dict(funcs.most_common(8)),
        "futures": futures,
    }


def _mtime(path: str | None) -> int:
    try:
        return 0 if path is None else os.stat(path).st_mtime_ns
    except OSError:
        return 0


def rss_mb() -> float:
    """This process's resident memory in MB (0.0 where /proc does not say)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


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
        pacer.close()
        gc.unfreeze()
    return None
