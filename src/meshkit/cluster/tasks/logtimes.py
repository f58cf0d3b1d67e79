"""When each line of a task's log was written, kept beside the log without touching its path.

A task writes its output straight to its files (see ``logs``): nothing between the process
and the file can block it, and it keeps logging while the agent restarts. So the times are
not taken from the data but from the files: the agent watches each live file with inotify
and, whenever it grew, appends a record ``(end, time)`` to ``<stream>.times`` (16 bytes,
two little-endian u64): "every byte of the stream before absolute position END had been
written by TIME" (nanoseconds of the Unix clock). TIME is the file's mtime from the same
stat(2) as its size: the kernel sets it at each write, so it is the time of the last write
of the batch, not when the agent got round to looking (a busy loop delays the record, not
the time it holds). Positions are absolute, as ``logs`` counts them across rotations.

A line's time is that of the first record whose end is past the line's first byte; a line
written after the last record gets the live file's mtime. Times rise with the position, so
``--since T`` is a cut: the end of the last record older than T. Resolution: each watch is
one-shot and re-armed ``THROTTLE`` seconds after it fired (until then the file carries no
inotify mark, so the task's writes cost nothing extra), so the lines of one look share the
time of its last write (in a flood, 10 ms batches); lines written while the agent is down
share the time of the last write before it came back. The kernel's file times tick with the
scheduler clock (a few ms), so a time can read up to one tick early.

The .times file stays bounded: records of bytes rotated out are dropped at each rotation,
and past ``MAX_RECORDS`` the older half is thinned (every other record goes), which only
makes old lines' times coarser, never earlier.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshkit.cluster.tasks import logs as tasklogs

log = logging.getLogger(__name__)

RECORD = struct.Struct("<QQ")
MAX_RECORDS = 64 * 1024  # 1 MiB of records per stream
THROTTLE = 0.01
POLL_INTERVAL = 0.2  # without inotify

_IN_MODIFY = 0x2
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONESHOT = 0x80000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


def times_path(task_dir: Path, stream: str) -> Path:
    return task_dir / f"{stream}.times"


# -- the records (sans-IO) ---------------------------------------------------------------------


def parse(data: bytes) -> tuple[list[int], list[int]]:
    """Ends and times of a .times file's bytes (a torn last record is ignored)."""
    whole = len(data) - len(data) % RECORD.size
    ends: list[int] = []
    times: list[int] = []
    for end, when in RECORD.iter_unpack(data[:whole]):
        ends.append(end)
        times.append(when)
    return ends, times


def line_time(ends: list[int], times: list[int], start: int, later: int) -> int:
    """The time of the line whose first byte is at ``start``; ``later`` when no record
    covers it yet."""
    i = bisect.bisect_right(ends, start)
    return times[i] if i < len(times) else later


def cut_before(ends: list[int], times: list[int], since_ns: int) -> int:
    """The position from which lines were written at ``since_ns`` or later."""
    i = bisect.bisect_left(times, since_ns)
    return ends[i - 1] if i > 0 else 0


def thin(
    ends: list[int], times: list[int], oldest: int, cap: int = MAX_RECORDS
) -> tuple[list[int], list[int]]:
    """Drop the records of bytes before ``oldest`` (rotated out), then, over ``cap``, every
    other record of the older half: dropping a record gives its lines the next one's time
    (later, never earlier)."""
    first = bisect.bisect_right(ends, oldest)
    ends, times = ends[first:], times[first:]
    while len(ends) > cap:
        half = len(ends) // 2
        keep = list(range(1, half, 2)) + list(range(half, len(ends)))
        ends = [ends[i] for i in keep]
        times = [times[i] for i in keep]
    return ends, times


def pack(ends: Iterable[int], times: Iterable[int]) -> bytes:
    return b"".join(RECORD.pack(e, t) for e, t in zip(ends, times, strict=True))


def load(task_dir: Path, stream: str) -> tuple[list[int], list[int]]:
    try:
        return parse(times_path(task_dir, stream).read_bytes())
    except FileNotFoundError:
        return [], []


# -- reading lines with their times --------------------------------------------------------------


@dataclass
class TimedLines:
    lines: list[tuple[int, str]]  # (time ns, text)
    end: int  # the position to pass as ``since`` next time


def _split(data: bytes, begin: int, complete_only: bool) -> tuple[list[tuple[int, bytes]], int]:
    if complete_only:
        data = data[: data.rfind(b"\n") + 1]
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl
        out.append((begin + pos, data[pos:stop]))
        pos = stop + 1
    return out, begin + len(data)


def read_timed(
    task_dir: Path,
    stream: str,
    *,
    tail: int | None = None,
    since: int | None = None,
    complete_only: bool = False,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> TimedLines:
    """Lines of one stream with their times: after position ``since`` (an earlier call's end),
    or written at ``since_ns`` or later; none written after ``until_ns``; the last ``tail``."""
    ends, times = load(task_dir, stream)
    live = tasklogs.log_path(task_dir, stream)
    try:
        mtime = live.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = 0
    later = max(mtime, times[-1] if times else 0)
    if since is not None:
        data, begin = tasklogs.read_from(task_dir, stream, since)
    elif since_ns is not None:
        cut = cut_before(ends, times, since_ns)
        data, begin = tasklogs.read_from(task_dir, stream, max(0, cut - 1))
        if cut > 0 and begin == cut - 1:
            # from the byte before the cut: a line that started before the cut is out
            nl = data.find(b"\n")
            data, begin = (data[nl + 1 :], begin + nl + 1) if nl >= 0 else (b"", begin + len(data))
    elif tail is not None and until_ns is None:
        data, begin = tasklogs.read_last_lines(task_dir, stream, tail)
    else:
        data, begin = tasklogs.read_from(task_dir, stream, 0)
    raw, end = _split(data, begin, complete_only)
    lines = [(line_time(ends, times, start, later), text) for start, text in raw]
    if since_ns is not None:
        lines = [x for x in lines if x[0] >= since_ns]
    if until_ns is not None:
        lines = [x for x in lines if x[0] <= until_ns]
    if tail is not None and tail >= 0:
        lines = lines[-tail:] if tail else []
    return TimedLines([(t, text.decode(errors="replace")) for t, text in lines], end)


# -- the watcher (the I/O shell) ---------------------------------------------------------------


@dataclass
class _Stream:
    name: str
    live: Path
    times: Path
    base: int = 0  # bytes rotated out of the live file
    last: int = 0  # the end of the last record
    last_time: int = 0
    count: int = 0
    fd: int = -1
    wd: int = -1
    paused: bool = False

    def observe(self) -> None:
        try:
            st = os.stat(self.live)
        except FileNotFoundError:
            return
        end = self.base + st.st_size
        if end <= self.last or self.fd < 0:
            return
        when = max(st.st_mtime_ns, self.last_time)
        os.write(self.fd, RECORD.pack(end, when))
        self.last, self.last_time = end, when
        self.count += 1


@dataclass
class _Task:
    dir: Path
    streams: dict[str, _Stream] = field(default_factory=dict)
    paused: bool = False


class _Inotify:
    """inotify(7) through libc: Python has no binding of its own."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = int(self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd

    def add(self, path: Path) -> int:
        mask = ctypes.c_uint32(_IN_MODIFY | _IN_ONESHOT)
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return wd

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)

    def drain(self) -> tuple[set[int], bool]:
        """The watches that fired since the last drain, and whether the queue overflowed."""
        wds: set[int] = set()
        overflow = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return wds, overflow
            if not data:
                return wds, overflow
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    overflow = True
                elif not mask & _IN_IGNORED:  # IGNORED: the one-shot watch went, as asked
                    wds.add(wd)

    def close(self) -> None:
        os.close(self.fd)


class Stamper:
    """Records ``(end, time)`` for the log files of the live tasks of this node, on the
    caller's event loop (see the module docstring)."""

    def __init__(self) -> None:
        self._tasks: dict[str, _Task] = {}
        self._by_wd: dict[int, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify: _Inotify | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._disarmed: list[_Stream] = []  # fired one-shot watches, re-armed by a timer

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._notify = _Inotify()
        except OSError as exc:
            log.warning("task logs: no inotify (%s): looking every %.1fs", exc, POLL_INTERVAL)
            self._timer = self._loop.call_later(POLL_INTERVAL, self._poll)
            return
        self._loop.add_reader(self._notify.fd, self._readable)

    def close(self) -> None:
        for task_id in list(self._tasks):
            self.unwatch(task_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._notify is not None and self._loop is not None:
            self._loop.remove_reader(self._notify.fd)
            self._notify.close()
            self._notify = None

    def watch(self, task_id: str, task_dir: Path) -> None:
        """Start recording for a task whose process runs (just started, or adopted)."""
        if task_id in self._tasks:
            return
        task = _Task(task_dir)
        self._tasks[task_id] = task
        for stream in tasklogs.STREAMS:
            s = _Stream(stream, tasklogs.log_path(task_dir, stream), times_path(task_dir, stream))
            task.streams[stream] = s
            self._open(s)
            if self._notify is not None:
                self._arm(s)
            s.observe()

    def unwatch(self, task_id: str) -> None:
        """The task's process ended: a last record, then stop."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        for s in task.streams.values():
            with contextlib.suppress(OSError):
                s.observe()
            self._close(s)

    def pause(self, task_id: str) -> None:
        """Hold the records while the task's logs rotate (the base moves)."""
        task = self._tasks.get(task_id)
        if task is not None:
            task.paused = True
            for s in task.streams.values():
                s.paused = True
                self._close_fd(s)

    def resume(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.paused = False
        for s in task.streams.values():
            s.paused = False
            self._open(s)
            s.observe()

    @staticmethod
    def prune(task_dir: Path, stream: str, cap: int = MAX_RECORDS) -> None:
        """After a rotation (the task paused): drop the records of bytes no longer kept."""
        ends, times = load(task_dir, stream)
        if not ends:
            return
        kept_ends, kept_times = thin(ends, times, tasklogs.oldest_position(task_dir, stream), cap)
        if len(kept_ends) == len(ends):
            return
        path = times_path(task_dir, stream)
        tmp = path.with_suffix(".times.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pack(kept_ends, kept_times))
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def needs_prune(self, task_id: str, cap: int = MAX_RECORDS) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and any(s.count > cap for s in task.streams.values())

    # -- internals --------------------------------------------------------------------------

    def _open(self, s: _Stream) -> None:
        ends, times = load(s.live.parent, s.name)
        s.base = tasklogs.rotated_bytes(s.live.parent, s.name)
        s.last = ends[-1] if ends else 0
        s.last_time = times[-1] if times else 0
        s.count = len(ends)
        s.fd = os.open(s.times, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _close_fd(self, s: _Stream) -> None:
        if s.fd >= 0:
            os.close(s.fd)
            s.fd = -1

    def _close(self, s: _Stream) -> None:
        self._close_fd(s)
        if s.wd >= 0:
            self._by_wd.pop(s.wd, None)
            if self._notify is not None:
                self._notify.remove(s.wd)  # gone already when the file was removed: harmless
            s.wd = -1
        if s in self._disarmed:
            self._disarmed.remove(s)

    def _arm(self, s: _Stream) -> None:
        assert self._notify is not None
        try:
            s.wd = self._notify.add(s.live)
        except OSError as exc:
            log.warning("task logs: cannot watch %s: %s", s.live, exc)
            return
        self._by_wd[s.wd] = s

    def _observe_all(self) -> None:
        for task in self._tasks.values():
            if not task.paused:
                for s in task.streams.values():
                    self._observe(s)

    def _observe(self, s: _Stream) -> None:
        try:
            s.observe()
        except OSError as exc:
            log.warning("task logs: cannot record the times of %s: %s", s.live, exc)

    def _readable(self) -> None:
        assert self._notify is not None and self._loop is not None
        wds, overflow = self._notify.drain()
        if overflow:
            # events were lost, one-shot watches among them: arm every stream again (a watch
            # still armed keeps its wd) and look at them all
            for task in self._tasks.values():
                for s in task.streams.values():
                    if s.wd >= 0:
                        self._by_wd.pop(s.wd, None)
                    if s not in self._disarmed:
                        self._arm(s)
            self._observe_all()
        for wd in wds:
            found = self._by_wd.pop(wd, None)
            if found is None:
                continue
            s = found
            # the watch was one-shot: until it is re-armed the task's writes cost it nothing
            # (no inotify mark on the file), so a flood pays one event per THROTTLE seconds
            s.wd = -1
            self._disarmed.append(s)
            if not s.paused:
                self._observe(s)
        if self._disarmed and self._timer is None:
            self._timer = self._loop.call_later(THROTTLE, self._rearm)

    def _rearm(self) -> None:
        self._timer = None
        if self._notify is None:
            return
        streams, self._disarmed = self._disarmed, []
        for s in streams:
            self._arm(s)
            if not s.paused:
                self._observe(s)  # what was written while no watch was armed

    def _poll(self) -> None:
        self._observe_all()
        if self._loop is not None:
            self._timer = self._loop.call_later(POLL_INTERVAL, self._poll)
