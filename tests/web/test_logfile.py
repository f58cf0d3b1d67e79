"""Log sinks: buffering, rotation by size, keep count, age, compression, shared sinks."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.web import logfile
from meshkit.web.logfile import Roller, RotatingFile, check_writable, open_sink


@pytest.fixture(autouse=True)
def _close_sinks() -> Iterator[None]:
    yield
    logfile.close_all()


def test_writes_at_once_without_a_loop(tmp_path: Path) -> None:
    sink = RotatingFile(str(tmp_path / "a.log"))
    sink.write("one")
    sink.write("two")
    assert (tmp_path / "a.log").read_text() == "one\ntwo\n"


def test_creates_folders_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "a.log"
    path.parent.mkdir(parents=True)
    path.write_text("old\n")
    sink = RotatingFile(str(path))
    sink.write("new")
    assert path.read_text() == "old\nnew\n"
    other = RotatingFile(str(tmp_path / "x" / "y" / "b.log"))
    other.write("z")
    assert (tmp_path / "x" / "y" / "b.log").read_text() == "z\n"


def test_buffered_in_a_loop_and_flushed_by_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = RotatingFile(str(path))

    async def main() -> tuple[str, str]:
        for i in range(100):
            sink.write(f"line {i}")
        before = path.read_text()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, path.read_text()

    before, after = asyncio.run(main())
    assert before == ""  # nothing written while the handler runs
    assert after.splitlines() == [f"line {i}" for i in range(100)]


def test_flushes_are_spaced_while_lines_keep_coming(tmp_path: Path) -> None:
    """A line after a flush of one line is written in its own loop turn; a line within
    FLUSH_EVERY of a busy flush (FLUSH_BUSY bytes) waits for it (one write(2) for a busy
    server's lines), and close() writes what waits."""
    path = tmp_path / "a.log"
    sink = RotatingFile(str(path))
    many = ["x" * 99] * (logfile.FLUSH_BUSY // 100 + 1)
    before = "".join(line + "\n" for line in many)

    async def main() -> tuple[str, str, str]:
        sink.write("one")
        await asyncio.sleep(0)
        assert path.read_text() == "one\n"
        sink.write("first")
        await asyncio.sleep(0)
        first = path.read_text()
        for line in many:
            sink.write(line)
        await asyncio.sleep(0)
        sink.write("second")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        waiting = path.read_text()
        await asyncio.sleep(logfile.FLUSH_EVERY * 3)
        spaced = path.read_text()
        sink.write("third")
        sink.close()  # (the scheduled flush then finds nothing to write)
        return first, waiting, spaced

    first, waiting, spaced = asyncio.run(main())
    assert first == "one\nfirst\n"
    assert waiting == "one\nfirst\n" + before
    assert spaced == waiting + "second\n"
    assert path.read_text() == spaced + "third\n"


def test_append_of_encode_is_write(tmp_path: Path) -> None:
    """The bytes a lane appends (RotatingFile.encode) are the ones write() puts in the
    file: control characters escaped, a lone surrogate backslash-escaped."""
    lines = ["plain", "tab\there", "bell\x07 and \u2028", "caf\u00e9 \ud800 x"]
    a = RotatingFile(str(tmp_path / "a.log"))
    b = RotatingFile(str(tmp_path / "b.log"))
    for line in lines:
        a.write(line)
        b.append(RotatingFile.encode(line))
    a.close()
    b.close()
    raw = (tmp_path / "a.log").read_bytes()
    assert raw == (tmp_path / "b.log").read_bytes()
    assert raw.splitlines()[2] == b"bell\\x07 and \\u2028"
    assert b"\\ud800" in raw


def test_big_buffer_flushes_early(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = RotatingFile(str(path))

    async def main() -> int:
        for _ in range(200):
            sink.write("x" * 1000)
        return path.stat().st_size

    assert asyncio.run(main()) >= logfile.FLUSH_AT


def _fill(sink: RotatingFile, lines: int, width: int = 99) -> None:
    for _ in range(lines):
        sink.write("x" * width)


def test_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = RotatingFile(str(path), Roller(size_mb=1, keep=2, age_days=0))
    for _ in range(4):
        _fill(sink, 10486)  # a bit more than 1 MB each time (100 bytes a line)
        sink.wait_mill()
    time.sleep(0.01)
    sink.flush()
    sink.wait_mill()
    sink.mill(wait=True)
    backups = sink.backups()
    assert len(backups) == 2
    for _, name in backups:
        base = os.path.basename(name)
        assert base.startswith("access-") and base.endswith(".log")
        assert os.path.getsize(name) <= 1024 * 1024
    assert path.stat().st_size <= 1024 * 1024


def test_rotate_compress(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    sink = RotatingFile(str(path), Roller(size_mb=1, keep=5, compress=True))
    sink.write("first")
    sink.rotate()
    sink.wait_mill()
    backups = sink.backups()
    assert len(backups) == 1
    name = backups[0][1]
    assert name.endswith(".log.gz")
    with gzip.open(name, "rt") as f:
        assert f.read() == "first\n"
    sink.write("second")
    assert path.read_text() == "second\n"


def test_rotate_age_removes_old_backups(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    old = tmp_path / "a-2001-01-01T00-00-00.000.log"
    old.write_text("old\n")
    recent_name = time.strftime("a-%Y-%m-%dT%H-%M-%S.000.log", time.localtime())
    (tmp_path / recent_name).write_text("recent\n")
    (tmp_path / "unrelated.log").write_text("keep me\n")
    sink = RotatingFile(str(path), Roller(age_days=14, keep=0))
    sink.mill(wait=True)
    assert not old.exists()
    assert (tmp_path / recent_name).exists()
    assert (tmp_path / "unrelated.log").exists()


def test_open_sink_is_shared_per_file(tmp_path: Path) -> None:
    a = open_sink(str(tmp_path / "s.log"))
    b = open_sink(os.path.join(str(tmp_path), ".", "s.log"))
    assert a is b
    assert open_sink("stdout") is open_sink("stdout")


def test_stream_sinks(capsys: pytest.CaptureFixture[str]) -> None:
    open_sink("stdout").write("to out")
    open_sink("stderr").write("to err")
    out, err = capsys.readouterr()
    assert out == "to out\n" and err == "to err\n"


def test_open_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        open_sink(str(tmp_path / "file" / "a.log"))


def test_check_writable(tmp_path: Path) -> None:
    assert check_writable("stdout") is None
    assert check_writable(str(tmp_path / "new.log")) is None
    assert check_writable(str(tmp_path / "deep" / "new.log")) is None
    assert check_writable(str(tmp_path)) is not None  # a directory
    (tmp_path / "file").write_text("")
    assert check_writable(str(tmp_path / "file" / "a.log")) is not None
    assert not (tmp_path / "new.log").exists()  # no side effects


def test_roller_options() -> None:
    r = Roller()
    assert (r.size_mb, r.age_days, r.keep, r.compress) == (100, 14, 10, False)
    assert logfile.roller_option_error(r, "rotate_size", ["5"]) is None
    assert logfile.roller_option_error(r, "rotate_keep", ["3"]) is None
    assert logfile.roller_option_error(r, "rotate_age", ["7"]) is None
    assert logfile.roller_option_error(r, "rotate_compress", []) is None
    assert (r.size_mb, r.age_days, r.keep, r.compress) == (5, 7, 3, True)
    assert logfile.roller_option_error(r, "rotate_size", ["x"]) is not None
    assert logfile.roller_option_error(r, "rotate_size", []) is not None
    assert logfile.roller_option_error(r, "rotate_compress", ["1"]) is not None


def _fastpath_write_lines() -> Any:
    from meshkit._ext import load_fastpath

    fp = load_fastpath()
    return getattr(fp, "proxy_lane_write_lines", None) if fp is not None else None


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_replayed_entries_write_as_write_does(tmp_path: Path, compiled: bool) -> None:
    """Remembered lines written again (lanerequest.write_entries, and the proxy lane's C
    twin of it) put the bytes write() would into the file: buffered within a loop turn,
    flushed at once when the buffer passes FLUSH_AT, nothing lost at close; a stream
    sink's line goes through its write()."""
    from meshkit.web.lanerequest import log_entries, write_entries

    write: Any = write_entries
    if compiled:
        write = _fastpath_write_lines()
        if write is None:
            pytest.skip("the compiled proxy lane is not built")
    path = tmp_path / "a.log"
    sink = RotatingFile(str(path))
    other = RotatingFile(str(tmp_path / "b.log"))
    line = '127.0.0.1 - [07/Dec/2026:05:00:00 +0000] "GET /caf\u00e9\x07 HTTP/1.1" 200 81'
    entries = log_entries(((sink, line), (other, line + " other")))
    assert entries[0][2] is sink.pending and entries[0][3] == RotatingFile.encode(line)
    times = logfile.FLUSH_AT // len(entries[0][3]) + 5

    async def main() -> tuple[int, int, int]:
        write(entries)
        first = path.stat().st_size  # buffered: the flush waits for the loop
        for _ in range(times - 1):
            write(entries)
        full = path.stat().st_size
        await asyncio.sleep(logfile.FLUSH_EVERY * 3)  # the rest: by the flush scheduled
        return first, full, path.stat().st_size

    first, full, later = asyncio.run(main())
    assert first == 0
    assert full >= logfile.FLUSH_AT  # flushed when the buffer filled, before the loop turned
    assert later == len(RotatingFile.encode(line)) * times
    sink.close()
    other.close()
    assert path.read_bytes() == RotatingFile.encode(line) * times
    assert (tmp_path / "b.log").read_bytes() == RotatingFile.encode(line + " other") * times


def test_replayed_entries_of_a_stream_sink(capsys: pytest.CaptureFixture[str]) -> None:
    from meshkit.web.lanerequest import log_entries, write_entries

    sink = open_sink("stdout")
    entries = log_entries(((sink, "to stdout"),))
    assert entries[0][2] is None
    write_entries(entries)
    fp = _fastpath_write_lines()
    if fp is not None:
        fp(entries)
    sink.flush()
    assert capsys.readouterr().out == "to stdout\n" * (2 if fp is not None else 1)
