"""The managers' record of long garbage collections (cluster_status's gc_max_ms/gc_pauses)."""

from __future__ import annotations

import gc

from meshkit.cluster.raft import gcpauses


def test_only_collections_over_the_floor_are_kept() -> None:
    rec = gcpauses.GcPauses()
    rec.callback("start", {"generation": 0})
    rec.callback("stop", {"generation": 0, "collected": 3})  # microseconds: not kept
    assert rec.status() == {"gc_max_ms": 0.0, "gc_pauses": []}
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
    assert set(first.status()) == {"gc_max_ms", "gc_pauses"}


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_the_pacer_freezes_survivors_and_frees_frozen_garbage_at_reclaim() -> None:
    import weakref

    pacer = gcpauses.GcPacer(0.0)
    try:
        gc.unfreeze()
        pacer.tick(gcpauses.FREEZE_EVERY / 2)  # nothing due
        assert gc.get_freeze_count() == 0
        obj = _Cyclic()
        ref = weakref.ref(obj)
        pacer.tick(gcpauses.FREEZE_EVERY)  # survivors frozen: out of every collection
        assert gc.get_freeze_count() > 0
        del obj
        gc.collect()
        assert ref() is not None  # frozen cyclic garbage: a full collection cannot see it
        pacer.tick(gcpauses.RECLAIM_EVERY)  # everything put back and collected once
        assert ref() is None
        assert pacer.reclaims == 1
    finally:
        gc.unfreeze()
