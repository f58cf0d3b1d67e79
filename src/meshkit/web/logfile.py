"""Log sinks for `log` and `errors`: rotating files, stdout, stderr and syslog.

Writes never wait on the disk from the event loop for long: a line goes into a buffer, and the
buffer is written with one write(2) when the loop gets to the flush scheduled by the first line
(or at once when there is no running loop, or the buffer passes 64 KiB). After a flush of many
lines (FLUSH_BUSY bytes) the next one waits until FLUSH_EVERY has passed (as nginx's
`access_log ... buffer= flush=`): a busy server's lines go out in one write(2) per FLUSH_EVERY
(or per 64 KiB), while a line that follows a flush of a few lines is written in its own loop
turn, as before. Every sink is flushed when it is closed, at exit and on SIGQUIT. A file's
buffer holds encoded bytes (RotatingFile.pending): the proxy lane appends the lines it
replays there from C (RotatingFile.encode made them: the bytes write() appends). Rotation
follows lumberjack, which Caddy v1 used:

- rotate_size MB (100): when a write would take the file past it, the file is renamed to
  `NAME-<local time 2006-01-02T15-04-05.000>.EXT` and a fresh file opened;
- rotate_keep N (10): at most N rotated files are kept (0 = all);
- rotate_age DAYS (14): rotated files older than that are removed (0 = no age limit);
- rotate_compress: rotated files are gzipped (`.gz`).

Pruning and compressing rotated files ("milling") runs in a background thread.

One sink per file (by absolute path), whichever directives and sites write to it, so rotation
is never raced by two writers in this process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gzip
import logging
import os
import re
import shutil
import sys
import syslog
import threading
import time
from dataclasses import dataclass
from typing import Protocol

_log = logging.getLogger("meshkit.web")

MEGABYTE = 1024 * 1024
FLUSH_AT = 64 * 1024
FLUSH_EVERY = 0.05  # seconds from a busy flush to the next one, at least (see above)
FLUSH_BUSY = 1024  # bytes in one flush that make the next one wait for FLUSH_EVERY
BACKUP_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"

ROLLER_OPTIONS = ("rotate_size", "rotate_age", "rotate_keep", "rotate_compress")


@dataclass
class Roller:
    """Rotation settings (Caddy v1 defaults)."""

    size_mb: int = 100
    age_days: int = 14
    keep: int = 10
    compress: bool = False


def roller_option_error(roller: Roller, name: str, args: list[str]) -> str | None:
    """Apply one `rotate_*` line to `roller`; the reason it is wrong, or None."""
    if name == "rotate_compress":
        if args:
            return "rotate_compress takes no argument"
        roller.compress = True
        return None
    if len(args) != 1:
        return f"{name} takes one number"
    try:
        value = int(args[0])
    except ValueError:
        return f"{name}: {args[0]!r} is not a whole number"
    if value < 0:
        return f"{name}: {value} is negative"
    if name == "rotate_size":
        roller.size_mb = value
    elif name == "rotate_age":
        roller.age_days = value
    elif name == "rotate_keep":
        roller.keep = value
    else:
        return f"unknown option {name!r}"
    return None


class LogSink(Protocol):
    name: str

    def write(self, line: str) -> None:
        """Queue one line (without its newline)."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


# Characters no log line may hold as they are: C0 controls but HTAB, DEL, and the other
# line breaks of str.splitlines() (SyslogSink splits at them). The access log escapes its
# values already (meshkit.web.placeholders.log_escape); this is for every other writer.
_LINE_BREAKERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _hex(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


class _Buffered:
    """Buffer lines and flush them from the loop (or at once without a running loop)."""

    name = ""

    def __init__(self) -> None:
        self._buf: list[str] = []
        self._buffered = 0
        self._scheduled = False
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        if _LINE_BREAKERS.search(line) is not None:
            # one call, one line: whatever a writer put in (the error log's request path),
            # a control character cannot start a forged line or drive a terminal
            line = _LINE_BREAKERS.sub(_hex, line)
        self._buf.append(line + "\n")
        self._buffered += len(line) + 1
        if self._buffered >= FLUSH_AT:
            self.flush()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        data = "".join(self._buf)
        self._buf = []
        self._buffered = 0
        with self._lock:
            self._emit(data)

    def _emit(self, data: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()


class StreamSink(_Buffered):
    """stdout or stderr (looked up at flush time, so redirections and test captures work)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _emit(self, data: str) -> None:
        stream = sys.stdout if self.name == "stdout" else sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass


class SyslogSink(_Buffered):
    """The local syslog (facility LOCAL0, ident meshkit)."""

    def __init__(self, priority: int = syslog.LOG_INFO) -> None:
        super().__init__()
        self.name = "syslog"
        self.priority = priority
        syslog.openlog("meshkit", 0, syslog.LOG_LOCAL0)

    def _emit(self, data: str) -> None:
        for line in data.splitlines():
            syslog.syslog(self.priority, line)


class RotatingFile(_Buffered):
    """An append-only log file with lumberjack-style rotation."""

    def __init__(self, path: str, roller: Roller | None = None) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.name = self.path
        self.roller = roller or Roller()
        self.max_bytes = (self.roller.size_mb or 100) * MEGABYTE
        self._fd = -1
        self._size = 0
        # the lines not written yet, encoded; never replaced (cleared in place), so that the
        # proxy lane may keep it (a flush is scheduled when it stops being empty)
        self.pending = bytearray()
        self._next_flush = 0.0  # time.monotonic() before which a flush waits (FLUSH_BUSY)
        self._mill_lock = threading.Lock()
        self._mill_thread: threading.Thread | None = None
        self.errors: list[str] = []  # write failures, for diagnosis (last few)
        self.open()

    # --- file handling ------------------------------------------------------------------
    def open(self) -> None:
        """Open (creating the folder and file if needed); raises OSError when it cannot."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fd = fd
        self._size = os.fstat(fd).st_size

    @staticmethod
    def encode(line: str) -> bytes:
        """The bytes write(line) appends to the file (its newline included)."""
        if _LINE_BREAKERS.search(line) is not None:
            line = _LINE_BREAKERS.sub(_hex, line)
        return (line + "\n").encode("utf-8", "backslashreplace")

    def write(self, line: str) -> None:
        self.append(self.encode(line))

    def append(self, raw: bytes) -> None:
        """Queue encoded lines (what encode() made)."""
        pending = self.pending
        was_empty = not pending
        pending += raw
        if len(pending) >= FLUSH_AT:
            self.flush()
        elif was_empty:
            self.schedule()

    def schedule(self) -> None:
        """Have the buffer flushed: in this loop turn, or once FLUSH_EVERY has passed
        since the last flush when that one was busy (at once without a running loop).
        Called when the buffer stops being empty (by append, and by the proxy lane)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        wait = self._next_flush - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self.flush)
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        data = bytes(pending)
        self._next_flush = time.monotonic() + FLUSH_EVERY if len(data) >= FLUSH_BUSY else 0.0
        pending.clear()
        with self._lock:
            self._write(data)

    def _write(self, raw: bytes) -> None:
        try:
            if self._fd < 0:
                self.open()
            if self._size > 0 and self._size + len(raw) > self.max_bytes:
                self._rotate()
            view = memoryview(raw)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as e:
            if not self.errors:
                _log.warning("cannot write log file %s: %s (lines are being lost)", self.path, e)
            self.errors = [*self.errors[-4:], f"{self.path}: {e}"]

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            os.rename(self.path, self.backup_name(time.time()))
        finally:
            self.open()
        self.mill()

    def backup_name(self, now: float) -> str:
        folder, base = os.path.split(self.path)
        stem, ext = os.path.splitext(base)
        stamp = time.strftime(BACKUP_TIME_FORMAT, time.localtime(now))
        millis = int((now % 1) * 1000)
        name = os.path.join(folder, f"{stem}-{stamp}.{millis:03d}{ext}")
        n = 1
        while os.path.exists(name) or os.path.exists(name + ".gz"):
            name = os.path.join(folder, f"{stem}-{stamp}.{millis:03d}-{n}{ext}")
            n += 1
        return name

    def rotate(self) -> None:
        """Rotate now (flushing what is buffered first)."""
        self.flush()
        with self._lock:
            self._rotate()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- milling: prune and compress rotated files ---------------------------------------
    def backups(self) -> list[tuple[float, str]]:
        """Rotated files, newest first, as (timestamp from the name, path)."""
        folder, base = os.path.split(self.path)
        stem, ext = os.path.splitext(base)
        pattern = re.compile(
            re.escape(stem)
            + r"-(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})\.(\d{3})(?:-\d+)?"
            + re.escape(ext)
            + r"(\.gz)?"
        )
        out: list[tuple[float, str]] = []
        try:
            names = os.listdir(folder or ".")
        except OSError:
            return out
        for name in names:
            m = pattern.fullmatch(name)
            if not m:
                continue
            try:
                stamp = time.mktime(time.strptime(m.group(1), BACKUP_TIME_FORMAT))
            except ValueError:
                continue
            out.append((stamp + int(m.group(2)) / 1000, os.path.join(folder, name)))
        out.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return out

    def mill(self, wait: bool = False) -> None:
        """Prune and compress rotated files in a background thread (or now when `wait`)."""
        if wait:
            self._mill_now()
            return
        thread = threading.Thread(target=self._mill_now, name="meshkit-log-mill", daemon=True)
        self._mill_thread = thread
        thread.start()

    def wait_mill(self) -> None:
        thread = self._mill_thread
        if thread is not None:
            thread.join()

    def _mill_now(self) -> None:
        with self._mill_lock:
            roller = self.roller
            backups = self.backups()
            keep: list[tuple[float, str]] = []
            remove: list[str] = []
            seen: set[str] = set()
            cutoff = time.time() - roller.age_days * 86400 if roller.age_days > 0 else None
            for stamp, path in backups:
                logical = path[:-3] if path.endswith(".gz") else path
                if logical in seen:  # both NAME and NAME.gz: a compression was interrupted
                    if not path.endswith(".gz"):
                        remove.append(path)
                    continue
                seen.add(logical)
                too_many = roller.keep > 0 and len(keep) >= roller.keep
                too_old = cutoff is not None and stamp < cutoff
                if too_many or too_old:
                    remove.append(path)
                else:
                    keep.append((stamp, path))
            for path in remove:
                with contextlib.suppress(OSError):
                    os.remove(path)
            if roller.compress:
                for _, path in keep:
                    if not path.endswith(".gz"):
                        _gzip_file(path)


def _gzip_file(path: str) -> None:
    tmp = path + ".gz.tmp"
    try:
        with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        os.rename(tmp, path + ".gz")
        os.remove(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


# --- the shared registry --------------------------------------------------------------------

_SINKS: dict[str, LogSink] = {}
_REGISTRY_LOCK = threading.Lock()

STREAMS = ("stdout", "stderr")


def check_writable(path: str) -> str | None:
    """Why a log file at `path` could not be opened for appending, or None (no side effects)."""
    if path in STREAMS or path == "syslog":
        return None
    full = os.path.abspath(path)
    if os.path.isdir(full):
        return f"{path} is a directory"
    if os.path.exists(full):
        if not os.access(full, os.W_OK):
            return f"{path}: permission denied"
        return None
    folder = os.path.dirname(full)
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not os.path.isdir(folder):
        return f"{path}: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{path}: cannot create files in {folder}"
    return None


def open_sink(output: str, roller: Roller | None = None) -> LogSink:
    """The sink for `output` (a file path, `stdout`, `stderr` or `syslog`), shared per file.

    Raises OSError when a file cannot be opened. The first opener's rotation settings win.
    """
    with _REGISTRY_LOCK:
        key = output if output in STREAMS or output == "syslog" else os.path.abspath(output)
        sink = _SINKS.get(key)
        if sink is not None:
            return sink
        if output in STREAMS:
            sink = StreamSink(output)
        elif output == "syslog":
            sink = SyslogSink()
        else:
            sink = RotatingFile(output, roller)
        _SINKS[key] = sink
        return sink


def flush_all() -> None:
    for sink in list(_SINKS.values()):
        sink.flush()


def close_all() -> None:
    """Flush and close every sink (at shutdown, and between tests)."""
    with _REGISTRY_LOCK:
        sinks = list(_SINKS.values())
        _SINKS.clear()
    for sink in sinks:
        sink.close()


atexit.register(flush_all)
