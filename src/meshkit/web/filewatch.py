"""Which remembered answers still hold, from inotify(7) events instead of a stat(2) per request.

An answer the rule table keeps (meshkit.web.ruletable) depends on a few files, its validators
(path, inode, device, size, mtime, ctime): today the lane stats each one before every answer.
Here a validator's path is armed once instead: every directory the kernel reads to resolve it
(each component's directory, following symlinks as path resolution does) is watched for that
name, and the file (or folder) at the end for changes to itself. A Ticket stands for one
answer's armed validators; any event that could change what stat(2) says about any of them
(a name created, removed, renamed or replaced over, a write, a chmod, a link count, a folder
removed or moved, the watch dropped, the event queue overflowing, the mount table changing)
clears the ticket, and the lane goes back to stat(2) and arms again. Nothing is stale for a
time, as nginx's open_file_cache is: events are queued by the very system call that makes the
change, and the lane looks for queued events before each answer (one epoll_wait(2) with no
timeout on a private epoll holding the inotify fd and /proc/self/mountinfo, cheaper than the
path walk of a stat; on the thread that armed it, a read of an io_uring's completion ring
whose polls the changing system call fills before the request's recv(2) returns:
csrc/watch_ring.c), so a change that completed before a request arrived is seen by it.

Where a watch cannot be set (the inotify watch limit, no inotify, a path that is not plain)
or cannot be trusted (network and FUSE filesystems, where another host's changes raise no
event: only LOCAL_FS_TYPES are armed), arm() returns None and the caller keeps its stat per
request. Writes through a shared mmap(2) raise no inotify event (the one case where stat(2)
would see a change this misses); MESHKIT_FILE_WATCH=0 turns the watches off for such trees.
stat(2) misses some changes that this sees (a same-size rewrite within one timestamp tick).

Sans-IO apart from the inotify fd itself: the lane (_lanerules.pxi) calls pending_fd's check
in C and drain() when it reports something; tests call poll().
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import stat as st_mod
import struct
import threading
from typing import Any

__all__ = ["ENABLED", "LOCAL_FS_TYPES", "RING", "FileWatch", "Ticket", "shared"]

ENABLED = os.environ.get("MESHKIT_FILE_WATCH", "").strip().lower() not in ("0", "off", "no")
# The compiled lane's check for queued events: a read of an io_uring's completion ring
# (csrc/watch_ring.c) on the thread that armed it, instead of an epoll_wait(2) per request;
# MESHKIT_WATCH_RING=0 keeps the epoll_wait (A/B measurements, kernels that refuse io_uring
# fall back by themselves).
RING = os.environ.get("MESHKIT_WATCH_RING", "").strip().lower() not in ("0", "off", "no")

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# a folder: its names (created, removed, renamed, chmod-ed) and itself
_DIR_MASK = (
    _IN_ATTRIB
    | _IN_CREATE
    | _IN_DELETE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
# a file at the end of a path: whatever changes what stat(2) says of it, by any of its names
_FILE_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_DELETE_SELF | _IN_MOVE_SELF
_LISTING = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO  # a folder's own stat
_EVENT = struct.Struct("iIII")
_MAX_LINKS = 40  # as the kernel's path walk (ELOOP)

# statfs(2) f_type of filesystems whose changes all pass through this kernel's VFS
LOCAL_FS_TYPES = frozenset(
    {
        0xEF53,  # ext2/3/4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0xF2F52010,  # f2fs
        0x794C7630,  # overlayfs (its layers must not change underneath: overlayfs(5))
        0x2FC12FC1,  # zfs
        0x4D44,  # vfat
        0x5346544E,  # ntfs
        0x3153464A,  # jfs
        0x52654973,  # reiserfs
    }
)

# registry keys: (wd, name) a name in a folder; (wd, SELF) the inode itself; (wd, LIST) a
# folder's listing (its own stat changes when a name comes or goes)
_SELF = b""
_LIST = b"/"


class Ticket:
    """One answer's armed validators: `ok` until an event clears it."""

    __slots__ = ("keys", "ok", "paths", "wds")

    def __init__(self) -> None:
        self.ok = True
        self.keys: list[tuple[int, bytes]] = []
        self.wds: list[int] = []
        self.paths: set[bytes] = set()  # the folders and files resolved: mount points that matter


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.add = libc.inotify_add_watch
        self.add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm = libc.inotify_rm_watch
        self.statfs = libc.statfs
        self.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


class FileWatch:
    """The inotify watches of one process (see the module doc)."""

    def __init__(self) -> None:
        self._libc = _Libc()
        fd = int(self._libc.init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self._mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._ep = select.epoll()
        self._ep.register(fd, select.EPOLLIN)
        self._ep.register(self._mounts, select.EPOLLPRI)
        self._ep.poll(0)  # the mount table as it is now
        self._mount_table = self._read_mounts()
        self._tickets: set[Ticket] = set()  # armed and not cleared
        self.pending_fd = self._ep.fileno()  # readable-or-priority: something to drain
        self._by_key: dict[tuple[int, bytes], set[Ticket]] = {}
        self._by_wd: dict[int, set[tuple[int, bytes]]] = {}
        self._wd_refs: dict[int, int] = {}
        self._fs_ok: dict[int, bool] = {}  # st_dev -> a LOCAL_FS_TYPES filesystem
        self.generation = 0  # bumped by each drain that cleared a ticket
        self.limited = False  # a watch could not be set (ENOSPC): callers stat instead
        self._buf = ctypes.create_string_buffer(256)
        # servers on loops of other threads (tests, embedding) share this: one at a time
        self._lock = threading.RLock()

    def close(self) -> None:
        self._ep.close()
        os.close(self._mounts)
        os.close(self.fd)
        for tickets in self._by_key.values():
            for t in tickets:
                t.ok = False
        self._by_key.clear()

    # ---------------------------------------------------------------- arming
    def arm(self, paths: Any) -> Ticket | None:
        """A ticket for these absolute paths (watches set before the caller's one stat(2)
        of each, so that no change can fall between), or None when one of them cannot be
        watched exactly (the caller then stats per request)."""
        with self._lock:
            return self._arm(paths)

    def _arm(self, paths: Any) -> Ticket | None:
        ticket = Ticket()
        try:
            for path in paths:
                if not self._arm_path(ticket, os.fsencode(path)):
                    self.release(ticket)
                    return None
        except (OSError, ValueError):
            self.release(ticket)
            return None
        self._tickets.add(ticket)
        return ticket

    def _watch(self, ticket: Ticket, path: bytes, mask: int, st: os.stat_result) -> int:
        ok = self._fs_ok.get(st.st_dev)
        if ok is None:
            if self._libc.statfs(path, self._buf) != 0:
                raise OSError(ctypes.get_errno(), "statfs")
            ftype = struct.unpack_from("l", self._buf.raw)[0] & 0xFFFFFFFF
            ok = self._fs_ok[st.st_dev] = ftype in LOCAL_FS_TYPES
        if not ok:
            raise ValueError("a filesystem whose changes may raise no inotify event")
        wd = int(self._libc.add(self.fd, path, mask))
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                self.limited = True
            raise OSError(err, "inotify_add_watch")
        self._wd_refs[wd] = self._wd_refs.get(wd, 0) + 1
        ticket.wds.append(wd)
        ticket.paths.add(path)
        return wd

    def _dep(self, ticket: Ticket, wd: int, name: bytes) -> None:
        key = (wd, name)
        tickets = self._by_key.get(key)
        if tickets is None:
            tickets = self._by_key[key] = set()
            self._by_wd.setdefault(wd, set()).add(key)
        tickets.add(ticket)
        ticket.keys.append(key)

    def _arm_path(self, ticket: Ticket, path: bytes) -> bool:
        """Watch what resolving `path` reads, as the kernel's walk does; False for a path
        that does not resolve to a file or folder (its stat fails: nothing to keep)."""
        if not path.startswith(b"/"):
            return False
        todo = [p for p in reversed(path.split(b"/")) if p]
        cur = b"/"
        wd_cur = self._watch(ticket, cur, _DIR_MASK, os.stat(cur))
        self._dep(ticket, wd_cur, _SELF)
        links = 0
        while todo:
            name = todo.pop()
            if name == b".":
                continue
            if name == b"..":
                cur = os.path.dirname(cur) or b"/"
                wd_cur = self._watch(ticket, cur, _DIR_MASK, os.stat(cur))
                self._dep(ticket, wd_cur, _SELF)
                continue
            self._dep(ticket, wd_cur, name)  # watched before it is looked at
            full = (cur.rstrip(b"/") + b"/" + name) if cur != b"/" else b"/" + name
            st = os.lstat(full)
            if st_mod.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    return False
                target = os.readlink(full)
                todo.extend(p for p in reversed(target.split(b"/")) if p)
                if target.startswith(b"/"):
                    cur = b"/"
                    wd_cur = self._watch(ticket, cur, _DIR_MASK, os.stat(cur))
                    self._dep(ticket, wd_cur, _SELF)
                continue
            is_dir = st_mod.S_ISDIR(st.st_mode)
            if todo and not is_dir:
                return False
            if not todo:  # the end of the path: the file or folder itself
                mask = _DIR_MASK if is_dir else _FILE_MASK
                wd = self._watch(ticket, full, mask, st)
                self._dep(ticket, wd, _SELF)
                if is_dir:
                    self._dep(ticket, wd, _LIST)
                return True
            cur = full
            wd_cur = self._watch(ticket, cur, _DIR_MASK, st)
            self._dep(ticket, wd_cur, _SELF)
        # the path ended on a folder reached by "/", ".", ".." or a symlink: that folder
        self._dep(ticket, wd_cur, _LIST)
        return True

    def release(self, ticket: Ticket) -> None:
        """Forget a ticket (its answer went): its watches go once nothing else needs them."""
        with self._lock:
            self._release(ticket)

    def _release(self, ticket: Ticket) -> None:
        ticket.ok = False
        self._tickets.discard(ticket)
        by_key = self._by_key
        for key in ticket.keys:
            tickets = by_key.get(key)
            if tickets is not None:
                tickets.discard(ticket)
                if not tickets:
                    del by_key[key]
                    keys = self._by_wd.get(key[0])
                    if keys is not None:
                        keys.discard(key)
        ticket.keys = []
        for wd in ticket.wds:
            refs = self._wd_refs.get(wd, 0) - 1
            if refs > 0:
                self._wd_refs[wd] = refs
                continue
            self._wd_refs.pop(wd, None)
            self._by_wd.pop(wd, None)
            self._libc.rm(self.fd, wd)
        ticket.wds = []

    # ---------------------------------------------------------------- events
    def poll(self) -> int:
        """Drain whatever is queued (the Python form of the lane's check); the generation."""
        flags = 0
        for fd, _ in self._ep.poll(0):
            flags |= 1 if fd == self.fd else 2
        if flags:
            self.drain(flags)
        return self.generation

    def drain(self, flags: int = 1) -> None:
        """Clear the tickets the queued events touch (flags: 1 inotify, 2 the mount table)."""
        with self._lock:
            self._drain(flags)

    def _drain(self, flags: int) -> None:
        cleared = False
        if flags & 2:
            cleared = self._mounts_changed()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    cleared = self._clear_all() or cleared
                elif mask & (_IN_IGNORED | _IN_UNMOUNT):
                    cleared = self._clear_wd(wd) or cleared
                elif name:
                    cleared = self._clear(wd, name) or cleared
                    if mask & _LISTING:
                        cleared = self._clear(wd, _LIST) or cleared
                else:
                    cleared = self._clear(wd, _SELF) or cleared
        if cleared:
            self.generation += 1

    def _clear(self, wd: int, name: bytes) -> bool:
        tickets = self._by_key.get((wd, name))
        if not tickets:
            return False
        for t in list(tickets):
            self.release(t)
        return True

    def _clear_wd(self, wd: int) -> bool:
        cleared = False
        for key in list(self._by_wd.get(wd, ())):
            cleared = self._clear(*key) or cleared
        return cleared

    def _clear_all(self) -> bool:
        tickets = list(self._tickets)
        for t in tickets:
            self.release(t)
        return bool(tickets)

    def _read_mounts(self) -> set[tuple[bytes, bytes]]:
        """(mount id, mount point) of each mount of this process's namespace."""
        os.lseek(self._mounts, 0, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(self._mounts, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        out = set()
        for line in b"".join(chunks).splitlines():
            fields = line.split(b" ", 5)
            if len(fields) > 4:
                out.add((fields[0], _unescape(fields[4])))
        return out

    def _mounts_changed(self) -> bool:
        """Clear the tickets that resolved a path something was mounted on or unmounted
        from (other mounts, such as a container's or a network namespace's elsewhere, leave
        them alone); everything when the table cannot be read."""
        try:
            table = self._read_mounts()
        except OSError:
            return self._clear_all()
        changed = {point for _, point in table ^ self._mount_table}
        self._mount_table = table
        hit = [t for t in self._tickets if not changed.isdisjoint(t.paths)]
        for t in hit:
            self.release(t)
        return bool(hit)


def _unescape(point: bytes) -> bytes:
    """A mountinfo path field with its octal escapes (space, tab, newline, backslash)."""
    if b"\\" not in point:
        return point
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), point)


_SHARED: list[FileWatch | None] = []


def shared() -> FileWatch | None:
    """The process's FileWatch (made on first use), or None when watches are off or
    inotify is missing (callers stat per request)."""
    if not _SHARED:
        watch: FileWatch | None = None
        if ENABLED:
            try:
                watch = FileWatch()
            except (OSError, AttributeError):
                watch = None
        _SHARED.append(watch)
    return _SHARED[0]
