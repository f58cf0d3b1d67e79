"""A task's log files: opening them for the process, copy-truncate rotation, reading them back.

Each stream (stdout, stderr) of a task goes to ``<task dir>/<stream>.log``, opened O_APPEND by
the agent and handed to the process, which writes to it directly: the output does not pass
through the agent, so the task keeps logging while the agent restarts.

Rotation is copy-truncate, because the process holds the file open and cannot be told to
reopen it: when ``<stream>.log`` is larger than ``max_bytes`` the agent shifts
``<stream>.log.1`` to ``.2`` (and so on, ``keep`` files per stream in all, 10 MiB x 3 by
default), copies the live file to ``.1`` and truncates it; O_APPEND makes the process's next
write land at the new end. The price (the same as logrotate's copytruncate): bytes written
between the copy and the truncation are lost.

Offsets are absolute: ``positions.json`` counts, per stream, the bytes rotated out of the live
file so far, so position P of a stream is in the live file at P - rotated, or in a rotated file
before it. That makes ``since`` offsets of an earlier read stay meaningful across rotations.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from meshkit.base.files import private_opener, write_private

STREAMS = ("stdout", "stderr")
MAX_BYTES = 10 * 1024 * 1024
KEEP_FILES = 3
POSITIONS_FILE = "positions.json"
_CHUNK = 64 * 1024


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
    """Rotate the streams of a task whose live file is over ``max_bytes``; which ones."""
    rotated: list[str] = []
    positions = _read_positions(task_dir)
    for stream in STREAMS:
        live = log_path(task_dir, stream)
        try:
            if live.stat().st_size <= max_bytes:
                continue
        except FileNotFoundError:
            continue
        for index in range(keep - 1, 1, -1):
            older = log_path(task_dir, stream, index - 1)
            if older.exists():
                os.replace(older, log_path(task_dir, stream, index))
        first = log_path(task_dir, stream, 1)
        if keep > 1:
            with open(live, "rb") as src, open(first, "wb", opener=private_opener) as dst:
                shutil.copyfileobj(src, dst)
                copied = dst.tell()
        else:
            copied = live.stat().st_size
        with open(live, "r+b") as f:
            f.truncate(0)
        positions[stream] = positions.get(stream, 0) + copied
        rotated.append(stream)
    if rotated:
        _write_positions(task_dir, positions)
    return rotated


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


def read_from(task_dir: Path, stream: str, begin: int) -> tuple[bytes, int]:
    """The stream's bytes from absolute ``begin`` (or its oldest kept byte), and where they
    start (``logtimes`` splits them itself, keeping each line's position)."""
    return _read_range(_segments(task_dir, stream), begin)


def read_last_lines(task_dir: Path, stream: str, tail: int) -> tuple[bytes, int]:
    """The stream's last bytes, enough to hold its last ``tail`` lines, and where they start."""
    return _read_last(_segments(task_dir, stream), tail)


def rotated_bytes(task_dir: Path, stream: str) -> int:
    """The bytes of the stream rotated out of its live file so far."""
    return _read_positions(task_dir).get(stream, 0)


def oldest_position(task_dir: Path, stream: str) -> int:
    """The absolute position of the oldest byte of the stream still kept."""
    segs = _segments(task_dir, stream)
    return segs[0].start if segs else 0


def read_tail_bytes(task_dir: Path, stream: str, limit: int) -> bytes:
    """The last ``limit`` bytes of a stream (for the error of a failed task)."""
    segs = _segments(task_dir, stream)
    if not segs:
        return b""
    end = segs[-1].start + segs[-1].size
    data, _ = _read_range(segs, max(0, end - limit))
    return data[-limit:]
