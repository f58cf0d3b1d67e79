"""The open-file and stat cache of the static file server.

One cache per site root. `lookup(path)` stats `path` (one stat per request) and returns the
cached Entry when the file is still the same one — same device, inode, size, mtime_ns and
ctime_ns — so a changed file is never served stale. Otherwise it resolves the path again: the
real path (symlinks followed) must lie inside the root, regular files are opened (and read
whole when small), directories are remembered without an fd.

Entries hold an open fd shared by every response that sends it (sendfile with an explicit
offset never moves the file position). Each response takes a reference (`acquire`) and hands
`release` to the server; the cache holds one reference of its own, dropped when the entry is
evicted or found stale. The fd is closed when the last reference goes, so evicting a file
while a slow client still downloads it is safe.

Everything here runs on the event loop thread; there is no locking.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import stat as stat_mod
from collections import OrderedDict
from collections.abc import Callable

from meshkit._ext import load_fastpath

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) | os.O_NONBLOCK

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_close = os.close


def _load_stat_matches() -> Callable[[tuple[str, int, int, int, int, int]], bool] | None:
    fastpath = load_fastpath()
    return getattr(fastpath, "stat_matches", None) if fastpath is not None else None


# the compiled entry check (None: the twin, os.stat and Entry.same; tests swap it)
_STAT_MATCHES = _load_stat_matches()


def base36(n: int) -> str:
    if n <= 0:
        return "0" if n == 0 else "-" + base36(-n)
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out))


def http_date(ts: float) -> str:
    """An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`)."""
    return email.utils.formatdate(ts, usegmt=True)


def is_within(real: str, root_real: str) -> bool:
    """Is the real path `real` the root itself or below it?"""
    if root_real == "/":
        return real.startswith("/")
    return real == root_real or real.startswith(root_real + "/")


class Entry:
    """One path: a regular file (with an open fd) or a directory (fd -1)."""

    __slots__ = (
        "ctime_ns",
        "ctype",
        "data",
        "dead",
        "dev",
        "etag",
        "fd",
        "ino",
        "is_dir",
        "last_modified",
        "mode",
        "mtime",
        "mtime_ns",
        "path",
        "real",
        "refs",
        "siblings",
        "sig",
        "size",
    )

    def __init__(self, path: str, real: str, st: os.stat_result, fd: int = -1) -> None:
        self.path = path
        self.real = real
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.ctime_ns = st.st_ctime_ns
        self.mode = st.st_mode
        self.is_dir = stat_mod.S_ISDIR(st.st_mode)
        self.mtime = st.st_mtime_ns // 1_000_000_000  # whole seconds, as HTTP dates have
        self.fd = fd
        self.data: bytes | None = None
        self.refs = 1  # the cache's own reference
        self.dead = False
        # Strong validator: modification time (ns) and size, both in base 36.
        self.etag = f'"{base36(self.mtime_ns)}{base36(self.size)}"'
        self.last_modified = http_date(self.mtime)
        self.ctype: str | None = None  # filled in by the file server on first use
        # which precompressed siblings (.br, .gz) exist, as of the parent folder's
        # (mtime_ns, ino): (mtime_ns, ino, has_br, has_gz); kept by the file server
        self.siblings: tuple[int, int, bool, bool] | None = None
        # what `same()` compares, with the path: a response validator (message.Validator)
        self.sig = (path, self.ino, self.dev, self.size, self.mtime_ns, self.ctime_ns)

    def same(self, st: os.stat_result) -> bool:
        return (
            st.st_mtime_ns == self.mtime_ns
            and st.st_size == self.size
            and st.st_ino == self.ino
            and st.st_dev == self.dev
            and st.st_ctime_ns == self.ctime_ns
        )

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0 and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        # unreachable means no response holds it (each one keeps `release`, a bound method)
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            self.fd = -1
            try:  # noqa: SIM105 - contextlib may be gone at interpreter exit
                _close(fd)
            except Exception:
                pass

    def __repr__(self) -> str:
        kind = "dir" if self.is_dir else "file"
        return f"<Entry {kind} {self.path!r} size={self.size} refs={self.refs}>"


class Forbidden:
    """A path that exists but may not be read (answered with 403)."""

    def __repr__(self) -> str:
        return "FORBIDDEN"


FORBIDDEN = Forbidden()


class FileCache:
    """Entries by path (absolute, inside `root`), least recently used evicted first."""

    def __init__(
        self,
        root: str,
        max_entries: int = 256,
        max_bytes: int = 32 * 1024 * 1024,
        small_file: int = 64 * 1024,
    ) -> None:
        self.root = os.path.abspath(root)
        self.root_real = os.path.realpath(self.root)
        self.max_entries = max(1, max_entries)
        self.max_bytes = max_bytes
        self.small_file = small_file
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0  # sum of len(data) over cached entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: str) -> Entry | Forbidden | None:
        """The entry for `path`; FORBIDDEN when it exists but cannot be read; None when it
        does not exist, is not a regular file or directory, or resolves outside the root."""
        matches = _STAT_MATCHES
        if matches is not None:
            # the compiled check (meshkit._fastpath.stat_matches): a known entry whose file
            # stats the same, without a stat_result; anything else takes the path below
            e = self._entries.get(path)
            if e is not None and matches(e.sig):
                self._entries.move_to_end(path)
                return e
        try:
            st = os.stat(path)
        except PermissionError:
            return FORBIDDEN
        except (OSError, ValueError):
            # ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG... and embedded NULs (ValueError)
            return None
        entries = self._entries
        e = entries.get(path)
        if e is not None:
            if e.same(st):
                entries.move_to_end(path)
                return e
            self._drop(path, e)
        return self._load(path, st)

    def _inside(self, real: str) -> bool:
        if is_within(real, self.root_real):
            return True
        # The root itself may be a symlink that was switched (a deploy by `ln -sfn`).
        now = os.path.realpath(self.root)
        if now != self.root_real:
            self.root_real = now
            self._clear()
            return is_within(real, now)
        return False

    def _load(self, path: str, st: os.stat_result) -> Entry | Forbidden | None:
        mode = st.st_mode
        if stat_mod.S_ISDIR(mode):
            real = os.path.realpath(path)
            if not self._inside(real):
                return None
            try:
                if os.stat(real).st_ino != st.st_ino:
                    return None  # changed under us; the next request tries again
            except OSError:
                return None
            entry = Entry(path, real, st)
            self._insert(path, entry)
            return entry
        if not stat_mod.S_ISREG(mode):
            return None  # FIFOs, sockets, devices are never served
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except PermissionError:
            return FORBIDDEN
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
            real = os.path.realpath(path)
            if not stat_mod.S_ISREG(fst.st_mode) or not self._inside(real):
                os.close(fd)
                return None
            rst = os.stat(real)
            if (rst.st_ino, rst.st_dev) != (fst.st_ino, fst.st_dev):
                os.close(fd)  # a symlink was switched between open and realpath
                return None
            entry = Entry(path, real, fst, fd)
            if fst.st_size <= self.small_file:
                data = os.pread(fd, fst.st_size, 0)
                if len(data) == fst.st_size and entry.same(os.fstat(fd)):
                    entry.data = data
        except OSError:
            with contextlib.suppress(OSError):
                os.close(fd)
            return None
        self._insert(path, entry)
        return entry

    def _insert(self, path: str, entry: Entry) -> None:
        self._entries[path] = entry
        if entry.data is not None:
            self._bytes += len(entry.data)
        while len(self._entries) > self.max_entries or (
            self._bytes > self.max_bytes and len(self._entries) > 1
        ):
            _, old = self._entries.popitem(last=False)
            self._forget(old)

    def _drop(self, path: str, entry: Entry) -> None:
        del self._entries[path]
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        if entry.data is not None:
            self._bytes -= len(entry.data)
        entry.dead = True
        entry.release()

    def _clear(self) -> None:
        while self._entries:
            _, e = self._entries.popitem()
            self._forget(e)

    def close(self) -> None:
        """Drop every entry (fds still used by responses close when those finish)."""
        self._clear()
