"""Per-line times of task logs (``logtimes``): the records alone (pure), then the executor
with real processes: --since cuts at a time, --until stops at one, times rise line by line,
a flood neither blocks the task nor grows the records with it, a last line without its
newline and binary output come through, rotation prunes the records. Ordering between the
test and the task comes from files the task waits for, never from sleeps measured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cluster.test_executor import Lab, _with, lab, run
from meshkit.cluster.tasks import logtimes
from meshkit.cluster.tasks.logs import log_path

__all__ = ["lab"]  # the fixture, imported for the tests below


def test_records_give_each_line_the_first_time_past_its_start() -> None:
    data = logtimes.pack([10, 25, 40], [100, 200, 300])
    ends, times = logtimes.parse(data + b"\x01\x02")  # a torn last record is ignored
    assert (ends, times) == ([10, 25, 40], [100, 200, 300])
    assert [logtimes.line_time(ends, times, s, 999) for s in (0, 9, 10, 24, 25, 39, 40)] == [
        100, 100, 200, 200, 300, 300, 999,
    ]  # fmt: skip
    assert logtimes.cut_before(ends, times, 50) == 0
    assert logtimes.cut_before(ends, times, 200) == 10  # lines from 10 on were written at 200+
    assert logtimes.cut_before(ends, times, 201) == 25
    assert logtimes.cut_before(ends, times, 10**18) == 40


def test_thinning_drops_rotated_records_and_only_makes_old_times_later() -> None:
    ends = list(range(10, 1010, 10))
    times = list(range(1000, 1100))
    kept_ends, kept_times = logtimes.thin(ends, times, oldest=95, cap=40)
    assert kept_ends[0] > 95 and len(kept_ends) <= 40
    assert kept_ends[-20:] == ends[-20:]  # the newest records stay as they were
    assert kept_ends == sorted(kept_ends) and kept_times == sorted(kept_times)
    for start in range(100, 1000, 7):
        before = logtimes.line_time(ends, times, start, 0)
        after = logtimes.line_time(kept_ends, kept_times, start, 0)
        assert after >= before


def _gated(tmp: Path, *steps: str) -> str:
    """A script that runs each step once the file tmp/gN exists (N = the step's index)."""
    parts = [steps[0]]
    for i, step in enumerate(steps[1:], start=1):
        parts.append(f"while [ ! -f {tmp}/g{i} ]; do sleep 0.01; done; {step}")
    return "; ".join(parts)


def test_since_and_until_cut_at_times_and_times_rise(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    script = _gated(
        tmp_path,
        "echo a1; echo a2 >&2; echo a3",
        "echo b1; echo b2 >&2",
        "printf 'c-no-newline'; exec sleep 60",
    )

    async def until_lines(n: int) -> dict:
        await lab.until(lambda: len(ex.logs(tid, timestamps=True)["lines"]) >= n, f"{n} lines")
        return ex.logs(tid, timestamps=True)

    async def body() -> None:
        ex.sync([lab.record(tid, ["sh", "-c", script])])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        first = await until_lines(3)
        await asyncio.sleep(0.05)  # past the clock tick of the last write
        mid = time.time_ns()
        await asyncio.sleep(0.05)
        (tmp_path / "g1").touch()
        after = await until_lines(5)
        texts = [text for _, text, _ in after["lines"]]
        assert sorted(texts) == ["a1", "a2", "a3", "b1", "b2"]
        stamps = [when for _, _, when in after["lines"]]
        assert stamps == sorted(stamps) and all(isinstance(s, int) for s in stamps)
        assert max(w for _, t, w in after["lines"] if t.startswith("a")) < mid
        assert min(w for _, t, w in after["lines"] if t.startswith("b")) > mid
        assert first["lines"] == after["lines"][:3]  # a line's time does not change
        since = ex.logs(tid, since_ns=mid)
        assert [(s, t) for s, t, _ in since["lines"]] == [("stdout", "b1"), ("stderr", "b2")]
        until = ex.logs(tid, until_ns=mid)
        assert sorted(t for _, t, _ in until["lines"]) == ["a1", "a2", "a3"]
        assert ex.logs(tid, since_ns=mid, tail=1)["lines"][0][1] == "b2"
        # the plain form is what it was: streams one after the other, no times
        assert ex.logs(tid)["lines"][:3] == [["stdout", "a1"], ["stdout", "a3"], ["stdout", "b1"]]
        # follow-on calls from the offsets give only what is new, with times
        (tmp_path / "g2").touch()
        await asyncio.sleep(0.1)
        assert ex.logs(tid, since=since["since"], timestamps=True)["lines"] == []  # held back
        ex.sync([{**lab.record(tid, ["sh", "-c", script]), "desired_state": "shutdown"}])
        await lab.ended(tid)
        last = ex.logs(tid, since=since["since"], timestamps=True)["lines"]
        assert [(s, t) for s, t, _ in last] == [("stdout", "c-no-newline")]
        assert last[0][2] >= stamps[-1]

    run(lambda: _with(ex, body))


def test_a_flood_does_not_block_the_task_nor_grow_the_records(lab: Lab) -> None:
    ex = lab.executor()
    tid = lab.new_id()
    lines = 50_000  # one write(2) each: no buffering between the task and its file
    flood = (
        f"import os\nfor _ in range({lines}): os.write(1, b'flood\\n')\n"
        "os.write(1, b'\\xff\\xfe\\n')"
    )

    async def body() -> None:
        ex.sync([lab.record(tid, ["python3", "-c", flood])])
        await lab.ended(tid)
        assert lab.last(tid)["state"] == "complete"
        got = ex.logs(tid, timestamps=True)["lines"]
        assert len(got) == lines + 1
        assert got[-1][1] == "\ufffd\ufffd"  # binary output, replaced, not lost
        stamps = [w for _, _, w in got]
        assert stamps == sorted(stamps)
        ends, _ = logtimes.load(ex.tasks_dir / tid, "stdout")
        assert ends[-1] == log_path(ex.tasks_dir / tid, "stdout").stat().st_size
        assert len(ends) < lines // 10  # batched: far fewer records than writes

    run(lambda: _with(ex, body))


def test_rotation_prunes_the_records_and_since_still_cuts(lab: Lab, tmp_path: Path) -> None:
    ex = lab.executor()
    ex.log_max_bytes = 200
    ex.log_keep = 2
    ex.rotate_interval = 3600.0  # the test rotates by hand
    tid = lab.new_id()
    script = _gated(
        tmp_path,
        'i=0; while [ $i -lt 60 ]; do echo "old $i"; i=$((i+1)); done',
        'i=0; while [ $i -lt 60 ]; do echo "mid $i"; i=$((i+1)); done',
        "echo new; exec sleep 60",
    )

    async def body() -> None:
        ex.sync([lab.record(tid, ["sh", "-c", script])])
        await lab.reaches(tid, "running")
        lab.pid(tid)
        task_dir = ex.tasks_dir / tid
        await lab.until(lambda: len(ex.logs(tid)["lines"]) == 60, "old lines")
        assert await ex.rotate_logs() == [(tid, "stdout")]
        (tmp_path / "g1").touch()
        await lab.until(lambda: len(ex.logs(tid)["lines"]) == 120, "mid lines")
        await asyncio.sleep(0.05)
        mid = time.time_ns()
        await asyncio.sleep(0.05)
        assert await ex.rotate_logs() == [(tid, "stdout")]  # the "old" file is dropped now
        (tmp_path / "g2").touch()
        await lab.until(lambda: ex.logs(tid)["lines"][-1:] == [["stdout", "new"]], "new")
        ends, _ = logtimes.load(task_dir, "stdout")
        kept = (task_dir / "stdout.log.1").stat().st_size
        assert ends and ends[0] > ends[-1] - kept - 200  # no record of bytes rotated out
        assert [t for _, t, _ in ex.logs(tid, since_ns=mid)["lines"]] == ["new"]
        assert len(ex.logs(tid, until_ns=mid)["lines"]) == 60  # the mid lines still kept

    run(lambda: _with(ex, body))


def test_an_adopted_task_keeps_its_times_across_an_agent_restart(lab: Lab, tmp_path: Path) -> None:
    tid = lab.new_id()
    script = _gated(tmp_path, "echo before", "echo while-down", "echo after; exec sleep 60")
    record = lab.record(tid, ["sh", "-c", script])

    async def body() -> None:
        first = lab.executor()
        await first.start()
        try:
            first.sync([record])
            await lab.reaches(tid, "running")
            lab.pid(tid)
            await lab.until(lambda: first.logs(tid)["lines"], "the first line")
            before = first.logs(tid, timestamps=True)["lines"]
        finally:
            await first.close(stop_tasks=False)
        await asyncio.sleep(0.05)
        down = time.time_ns()
        await asyncio.sleep(0.05)
        (tmp_path / "g1").touch()  # the task writes while no agent watches
        task_dir = lab.root / "data" / "tasks" / tid
        await lab.until(lambda: b"while-down" in (task_dir / "stdout.log").read_bytes(), "down")
        second = lab.executor()
        await second.start()
        try:
            (tmp_path / "g2").touch()
            await lab.until(lambda: len(second.logs(tid)["lines"]) == 3, "all three lines")
            got = second.logs(tid, timestamps=True)["lines"]
            assert got[0] == before[0]  # recorded by the first agent, kept
            assert [t for _, t, _ in got] == ["before", "while-down", "after"]
            assert got[1][2] > down  # the file's time of that write, not the restart's
            assert [t for _, t, _ in second.logs(tid, since_ns=down)["lines"]] == [
                "while-down", "after",
            ]  # fmt: skip
        finally:
            await second.close(stop_tasks=True)

    run(body)
