"""The managers' record of long garbage collections (cluster_status's gc_max_ms/gc_pauses)."""

from __future__ import annotations

import gc
from typing import Any

from meshkit.cluster.raft import gcpauses


def test_only_collections_over_the_floor_are_kept() -> None:
    rec = gcpauses.GcPauses()
    rec.callback("start", {"generation": 0})
    rec.callback("stop", {"generation": 0, "collected": 3})  # microseconds: not kept
    st = rec.status()
    assert st["gc_max_ms"] == 0.0 and st["gc_pauses"] == [] and st["gc_cpu_ms"] >= 0.0
    rec.callback("start", {"generation": 2})
    rec._began -= 0.25  # as if the collection had taken 250 ms
    rec.callback("stop", {"generation": 2, "collected": 7})
    st = rec.status()
    assert st["gc_max_ms"] >= 250.0
    (entry,) = st["gc_pauses"]
    assert entry[1] >= 250.0 and entry[2:4] == [2, 7] and entry[4] >= 0.0


def test_installed_once_and_hooked_into_the_collector() -> None:
    first = gcpauses.install()
    assert gcpauses.install() is first
    assert gc.callbacks.count(first.callback) == 1
    gc.collect()  # runs through the hook without error
    assert set(first.status()) == {"gc_max_ms", "gc_cpu_ms", "gc_pauses"}


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def _audit(pacer: gcpauses.GcPacer, now: float) -> dict[str, Any]:
    """Tick the pacer at `now` (an audit is due) until the forked child has answered."""
    import time

    pacer.tick(now)
    assert pacer.audit is not None
    for _ in range(1000):
        if pacer.audit is None:
            break
        time.sleep(0.01)
        pacer.tick(now)
    assert pacer.audit is None and pacer.last is not None
    return pacer.last


def test_the_pacer_freezes_survivors_and_audits_frozen_garbage_without_collecting_it() -> None:
    import weakref

    pacer = gcpauses.GcPacer(0.0)
    try:
        gc.unfreeze()
        pacer.tick(gcpauses.FREEZE_EVERY / 2)  # nothing due
        assert gc.get_freeze_count() == 0
        objs = [_Cyclic() for _ in range(50)]
        ref = weakref.ref(objs[0])
        pacer.tick(gcpauses.FREEZE_EVERY)  # survivors frozen: out of every collection
        assert gc.get_freeze_count() > 0
        del objs
        gc.collect()
        assert ref() is not None  # frozen cyclic garbage: a full collection cannot see it
        found = _audit(pacer, gcpauses.AUDIT_EVERY)  # a child counts it; this process keeps it
        assert found["garbage"] >= 50 and found["types"]["_Cyclic"] >= 50
        assert found["frozen"] >= 50
        assert ref() is not None and pacer.reclaims == 0  # under the bound: no stall here
        assert pacer.status()["gc_audit"] is found
        assert gc.get_threshold()[2] == gcpauses.NEVER  # no automatic full collection
    finally:
        pacer.close()
        gc.unfreeze()
    assert gc.get_threshold()[2] != gcpauses.NEVER  # the interpreter's own pacing again


def test_frozen_garbage_over_the_bound_is_collected_once(monkeypatch: object) -> None:
    import weakref

    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(gcpauses, "RECLAIM_OVER", 10)
    pacer = gcpauses.GcPacer(0.0)
    try:
        gc.unfreeze()
        monkeypatch.setattr(pacer, "reclaim_over", lambda frozen: 10)
        objs = [_Cyclic() for _ in range(50)]
        ref = weakref.ref(objs[0])
        pacer.tick(gcpauses.FREEZE_EVERY)
        del objs
        _audit(pacer, gcpauses.AUDIT_EVERY)  # 50 > 10: a leak, paid for with one collection
        assert ref() is None and pacer.reclaims == 1
    finally:
        pacer.close()
        gc.unfreeze()


def test_the_pacer_takes_the_audit_a_dump_writer_child_left(tmp_path: Any) -> None:
    """The raft dump writer's child (forked anyway) audits after the dump; the pacer reads it
    at its next freeze and puts its own forked audit off."""
    import os
    import time

    path = str(tmp_path / ("dump" + ".gc-audit.json"))
    pacer = gcpauses.GcPacer(0.0, audit_file=path)
    try:
        gc.unfreeze()
        objs = [_Cyclic() for _ in range(30)]
        pacer.tick(gcpauses.FREEZE_EVERY)  # frozen
        del objs
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, as lib.DumpWriter's after its dump
            try:
                gcpauses.audit_to_file(path)
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert os.stat(path).st_mode & 0o777 == 0o600
        time.sleep(0.01)
        pacer.tick(2 * gcpauses.FREEZE_EVERY)
        assert pacer.last is not None and pacer.last["garbage"] >= 30
        assert pacer.last["types"]["_Cyclic"] >= 30 and pacer.last["fork_ms"] == "dump"
        assert pacer.next_audit == 2 * gcpauses.FREEZE_EVERY + gcpauses.AUDIT_EVERY
        assert pacer.audit is None  # no fork of its own
    finally:
        pacer.close()
        gc.unfreeze()
