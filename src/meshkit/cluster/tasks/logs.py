"""A task's log files: opening them for the process, copy-truncate rotation, reading them back.

Each stream (stdout, stderr) of a task goes to ``<task dir>/<stream>.log``, opened O_APPEND by
the agent and handed to the process, which writes to it directly: the output does not pass
through the agent, so the task keeps logging while the agent restarts.

Rotation is copy-truncate, because the process holds the file open and cannot be told to
reopen it: when ``<stream>.log`` is larger than ``max_bytes`` the agent shifts
``<stream>.log.1`` to ``.2`` (and so on, ``keep`` files per stream in all, 10 MiB x 3 by
default), copies the live file to ``.1`` and truncates it; O_APPEND makes the process's next
write land at the new end. The price (the same as logrotate's copytruncate): bytes written
between the copy and the truncation are lost; the copy is topped up just before the
truncation, so that window is a few system calls long.

Offsets are absolute: ``positions.json`` counts, per stream, the bytes rotated out of the live
file so far, so position P of a stream is in the live file at P - rotated, or in a rotated file
before it. That makes ``since`` offsets of an earlier read stay meaningful across rotations.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from meshkit.base.files import private_opener, write_private

STREAMS = ("stdout", "stderr")
MAX_BYTES = 10 * 1024 * 1024
KEEP_FILES = 3
POSITIONS_FILE = "positions.json"
_CHUNK = 64 * 1024
P = ParamSpec("P")
R = TypeVar("R")


def log_path(task_dir: Path, stream: str, index: int = 0) -> Path:
    """``stdout.log`` for index 0, ``stdout.log.N`` for the N-th rotated file."""
    return task_dir / (f"{stream}.log" if index == 0 else f"{stream}.log.{index}")


def open_streams(task_dir: Path) -> dict[str, int]:
    """Open (create) each stream's live file for appending; the caller closes the fds."""
    fds: dict[str, int] = {}
    try:
        for stream in STREAMS:
            fds[stream] = os.open(
                log_path(task_dir, stream),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,  # in the private data dir
            )
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _read_positions(task_dir: Path) -> dict[str, int]:
    try:
        data = json.loads((task_dir / POSITIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}
    )


def _write_positions(task_dir: Path, positions: dict[str, int]) -> None:
    write_private(task_dir / POSITIONS_FILE, json.dumps(positions))


def rotate(task_dir: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP_FILES) -> list[str]:
    """Rotate the streams of a task whose live file is over ``max_bytes``; which ones.

    Runs in a worker thread while the loop reads the same files: the bulk copy goes to a
    hidden ``.1.tmp`` first, and only the short switch (shift the older files, top up the copy
    with what was appended meanwhile, rename, truncate, new positions) holds the task's lock,
    so a reader sees the files before or after a rotation, never half of one."""
    rotated: list[str] = []
    for stream in STREAMS:
        live = log_path(task_dir, stream)
        try:
            if live.stat().st_size <= max_bytes:
                continue
        except FileNotFoundError:
            continue
        first = log_path(task_dir, stream, 1)
        pending = first.with_name(first.name + ".tmp")
        copied = 0
        if keep > 1:
            with open(live, "rb") as src, open(pending, "wb", opener=private_opener) as dst:
                shutil.copyfileobj(src, dst)
                copied = dst.tell()
        with _lock_of(task_dir):
            if keep > 1:
                for index in range(keep - 1, 1, -1):
                    older = log_path(task_dir, stream, index - 1)
                    if older.exists():
                        os.replace(older, log_path(task_dir, stream, index))
                with open(live, "rb") as src, open(pending, "ab") as dst:
                    src.seek(copied)
                    shutil.copyfileobj(src, dst)
                    copied = dst.tell()
                os.replace(pending, first)
            else:
                copied = live.stat().st_size
            with open(live, "r+b") as f:
                f.truncate(0)
            positions = _read_positions(task_dir)
            positions[stream] = positions.get(stream, 0) + copied
            _write_positions(task_dir, positions)
        rotated.append(stream)
    return rotated


# One lock per task folder between rotate() (a worker thread) and the readers (the loop).
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_of(task_dir: Path) -> threading.Lock:
    key = str(task_dir)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            if len(_LOCKS) > 4096:  # folders of ended tasks: drop the idle locks
                for k in [k for k, v in _LOCKS.items() if not v.locked()]:
                    del _LOCKS[k]
            lock = _LOCKS[key] = threading.Lock()
        return lock


def _consistent(read: Callable[P, R]) -> Callable[P, R]:
    """Run a reader (its first argument the task folder) under the folder's rotation lock."""

    @functools.wraps(read)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        task_dir = args[0]
        assert isinstance(task_dir, Path)
        with _lock_of(task_dir):
            return read(*args, **kwargs)

    return locked


@dataclass(frozen=True)
class _Segment:
    start: int  # absolute position of the file's first byte
    path: Path
    size: int


def _segments(task_dir: Path, stream: str) -> list[_Segment]:
    """The stream's files, oldest first, with the absolute position each starts at."""
    base = _read_positions(task_dir).get(stream, 0)
    segs: list[_Segment] = []
    live = log_path(task_dir, stream)
    try:
        segs.append(_Segment(base, live, live.stat().st_size))
    except FileNotFoundError:
        segs.append(_Segment(base, live, 0))
    start = base
    index = 1
    while True:
        path = log_path(task_dir, stream, index)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            break
        start -= size
        if start < 0:
            break
        segs.append(_Segment(start, path, size))
        index += 1
    segs.reverse()
    return segs


def _read_range(segs: list[_Segment], begin: int) -> tuple[bytes, int]:
    """The bytes of the stream from absolute ``begin`` (or its oldest kept byte) to the end."""
    if not segs:
        return b"", begin
    end = segs[-1].start + segs[-1].size
    if begin > end:
        # the live file shrank below the offset without a recorded rotation: start over
        begin = segs[-1].start
    begin = max(begin, segs[0].start)
    parts: list[bytes] = []
    for seg in segs:
        if seg.start + seg.size <= begin:
            continue
        try:
            with open(seg.path, "rb") as f:
                f.seek(max(0, begin - seg.start))
                parts.append(f.read(seg.size - max(0, begin - seg.start)))
        except FileNotFoundError:
            continue
    data = b"".join(parts)
    return data, begin


def _split(data: bytes, begin: int, complete_only: bool) -> tuple[list[str], int]:
    """Lines of ``data`` and the absolute position after the last one returned."""
    if complete_only:
        cut = data.rfind(b"\n") + 1
        data = data[:cut]
    end = begin + len(data)
    if not data:
        return [], end
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line.decode(errors="replace") for line in lines], end


@_consistent
def read_stream(
    task_dir: Path,
    stream: str,
    *,
    tail: int | None = None,
    since: int | None = None,
    complete_only: bool = False,
) -> tuple[list[str], int]:
    """Lines of one stream: all kept, the last ``tail``, or those after position ``since``;
    with the position to pass as ``since`` next time. ``complete_only`` holds back a line
    without its newline yet (the process is still writing)."""
    segs = _segments(task_dir, stream)
    if since is not None:
        data, begin = _read_range(segs, since)
        lines, end = _split(data, begin, complete_only)
        return (lines[-tail:] if tail is not None and tail >= 0 else lines), end
    if tail is None:
        data, begin = _read_range(segs, 0)
        return _split(data, begin, complete_only)
    data, begin = _read_last(segs, tail)
    lines, end = _split(data, begin, complete_only)
    return (lines[-tail:] if tail > 0 else []), end


def _read_last(segs: list[_Segment], tail: int) -> tuple[bytes, int]:
    """Read backwards from the end until more than ``tail`` newlines are in hand."""
    end_pos = segs[-1].start + segs[-1].size if segs else 0
    begin = end_pos
    oldest = segs[0].start if segs else 0
    data = b""
    while begin > oldest:
        begin = max(oldest, begin - _CHUNK)
        data, begin = _read_range(segs, begin)
        if data.count(b"\n") > tail:
            break
    return data, begin


@_consistent
def read_from(task_dir: Path, stream: str, begin: int) -> tuple[bytes, int]:
    """The stream's bytes from absolute ``begin`` (or its oldest kept byte), and where they
    start (``logtimes`` splits them itself, keeping each line's position)."""
    return _read_range(_segments(task_dir, stream), begin)


@_consistent
def read_last_lines(task_dir: Path, stream: str, tail: int) -> tuple[bytes, int]:
    """The stream's last bytes, enough to hold its last ``tail`` lines, and where they start."""
    return _read_last(_segments(task_dir, stream), tail)


@_consistent
def rotated_bytes(task_dir: Path, stream: str) -> int:
    """The bytes of the stream rotated out of its live file so far."""
    return _read_positions(task_dir).get(stream, 0)


@_consistent
def oldest_position(task_dir: Path, stream: str) -> int:
    """The absolute position of the oldest byte of the stream still kept."""
    segs = _segments(task_dir, stream)
    return segs[0].start if segs else 0


@_consistent
def read_tail_bytes(task_dir: Path, stream: str, limit: int) -> bytes:
    """The last ``limit`` bytes of a stream (for the error of a failed task)."""
    segs = _segments(task_dir, stream)
    if not segs:
        return b""
    end = segs[-1].start + segs[-1].size
    data, _ = _read_range(segs, max(0, end - limit))
    return data[-limit:]
