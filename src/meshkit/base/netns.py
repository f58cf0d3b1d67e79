"""Network namespaces: enter one (`NetnsRef`, `entered`, `setns`), and the named namespaces of
tasks: create one (loopback up), empty it, delete it.

A socket keeps the namespace it was made in, whatever thread later uses it, so the one event
loop can serve sockets of many namespaces: `entered(ref)` puts the calling thread in `ref` for
the few calls that make such a socket (two setns(2) calls, about 2.5 µs) and always back.
`NetnsRef` holds an open fd on a namespace, so that one removed meanwhile cannot be confused
with a new one of the same name.

A task with networks gets its own namespace named ``mk-<task id>`` under /run/netns (made with
``ip netns add``, so ``ip netns exec`` and ``ip -n`` work on it for debugging). The child
enters it with setns(2) through ctypes before exec, since Python 3.11 has no os.setns.
Deleting a namespace first kills every process still inside it (found by the namespace's
inode in /proc/*/ns/net), because a process that left the task's process group would
otherwise keep the namespace alive after ``ip netns del`` unlinks its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
NAME_PREFIX = "mk-"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000

_libc = ctypes.CDLL(None, use_errno=True)
# Each thread's own namespace, opened once: a thread only ever leaves it inside entered().
_home = threading.local()


class NetnsError(OSError):
    """A namespace could not be made, opened, entered or deleted; the message names it (and
    for `ip` commands, what ip said)."""


def netns_name(task_id: str) -> str:
    """The namespace a task owns."""
    return f"{NAME_PREFIX}{task_id}"


def netns_path(name: str) -> Path:
    """Where ``ip netns add`` bind-mounts the namespace."""
    return NETNS_DIR / name


def setns(fd: int, what: str = "") -> None:
    """Move the calling thread into the network namespace open on ``fd`` (also in a
    preexec_fn); NetnsError naming `what` when the kernel refuses."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        where = f"enter network namespace {what}" if what else "setns"
        raise NetnsError(err, f"{where}: {os.strerror(err)}")


class NetnsRef:
    """An open handle on one network namespace, by name under /run/netns or by path."""

    __slots__ = ("fd", "label")

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label

    @classmethod
    def open_name(cls, name: str) -> NetnsRef:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise NetnsError(0, f"invalid network namespace name {name!r}")
        return cls.open_path(str(NETNS_DIR / name), name)

    @classmethod
    def open_path(cls, path: str, label: str = "") -> NetnsRef:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsError(
                2, f"network namespace {label or path} does not exist ({path} is missing)"
            ) from None
        except OSError as exc:
            raise NetnsError(
                exc.errno or 0, f"open network namespace {label or path}: {exc.strerror}"
            ) from None
        return cls(fd, label or path)

    @classmethod
    def current(cls) -> NetnsRef:
        """The calling thread's own namespace (to come back to)."""
        path = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        return cls.open_path(path, "of this thread")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"NetnsRef({self.label!r})"


@contextlib.contextmanager
def entered(ref: NetnsRef | None) -> Iterator[None]:
    """Run the block with the calling thread in `ref` (None: stay where it is).

    Sockets made inside the block belong to `ref`'s namespace. The thread always returns to
    its own namespace; if it cannot (it never should), the process stops rather than go on
    making sockets in the wrong namespace."""
    if ref is None:
        yield
        return
    home = getattr(_home, "fd", None)
    if home is None:
        path = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        home = _home.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    setns(ref.fd, ref.label)
    try:
        yield
    finally:
        try:
            setns(home, "of this thread (going back)")
        except OSError as exc:  # pragma: no cover - the kernel keeps the home ns alive
            os.write(2, f"meshkit: cannot return to the home namespace: {exc}\n".encode())
            os._exit(70)


def resolv_conf_for(name: str) -> bytes | None:
    """/etc/netns/<name>/resolv.conf when the overlay wrote one (as bytes, for a preexec_fn)."""
    path = ETC_NETNS / name / "resolv.conf"
    return bytes(path) if path.is_file() else None


def _mount(src: bytes, dst: bytes, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    if _libc.mount(src, dst, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src.decode()} on {dst.decode()}: {os.strerror(err)}")


def private_mounts() -> None:
    """In a child before exec: a mount namespace of its own (mounts not propagated back)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --make-rslave /: {os.strerror(err)}")


def bind_resolv_conf(path: bytes) -> None:
    """In a child before exec, in its own mount namespace: `path` bound over
    /etc/resolv.conf."""
    if _libc.mount(path, b"/etc/resolv.conf", None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {path.decode()} over /etc/resolv.conf: {os.strerror(err)}")


@dataclass(frozen=True)
class TaskFile:
    """A secret or config for a task: its absolute path in the task, bytes and owner."""

    path: str
    data: bytes
    uid: int
    gid: int
    mode: int


RUN = "/run"
CONFIG_STAGE = "/run/.meshkit-configs"


def place_files(files: list[TaskFile]) -> None:
    """In a child before exec, in its own mount namespace: a tmpfs over /run holding the
    files, the host's /run entries bound back into it (so the task still sees them; the
    host's /run itself is untouched), then each file under /run written there and each file
    elsewhere (a config) bound over its target, which must exist. The tmpfs lives as long as
    the task's mount namespace: its last process gone, the files are gone."""
    fd = os.open(RUN, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = os.listdir(fd)
        _mount(b"tmpfs", RUN.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755")
        for name in names:
            src = f"/proc/self/fd/{fd}/{name}"
            dst = f"{RUN}/{name}"
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o755)
            else:
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o600))
            _mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None)
    finally:
        os.close(fd)
    host_entries = set(names)
    for i, f in enumerate(files):
        parts = f.path.split("/")
        in_run = len(parts) > 3 and parts[1] == "run" and parts[2] not in host_entries
        target = f.path if in_run else f"{CONFIG_STAGE}/{i}"
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        out = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(out, f.data)  # tmpfs: one write takes it whole
            os.fchown(out, f.uid, f.gid)
            os.fchmod(out, f.mode)
        finally:
            os.close(out)
        if not in_run:
            if not os.path.isfile(f.path):
                raise OSError(
                    errno.ENOENT,
                    f"config target {f.path} is not a file on this node (a config is bound "
                    "over an existing file, or placed in a new folder under /run)",
                )
            _mount(target.encode(), f.path.encode(), None, MS_BIND, None)


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def create(name: str) -> None:
    """Make namespace ``name`` with lo up; a leftover of the same name is replaced."""
    if netns_path(name).exists():
        await delete(name)
    code, err = await _ip("netns", "add", name)
    if code != 0:
        raise NetnsError(f"ip netns add {name}: {err or f'exit code {code}'}")
    code, err = await _ip("-n", name, "link", "set", "lo", "up")
    if code != 0:
        await delete(name)
        raise NetnsError(f"ip -n {name} link set lo up: {err or f'exit code {code}'}")


def pids_inside(name: str) -> list[int]:
    """Pids of the processes whose network namespace is ``name``."""
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if ns.st_ino == st.st_ino and ns.st_dev == st.st_dev:
            found.append(int(entry))
    return found


def kill_inside(name: str) -> int:
    """SIGKILL every process inside ``name``; how many there were."""
    pids = pids_inside(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


async def delete(name: str) -> None:
    """Kill what is left inside ``name`` and delete it (with its /etc/netns folder); a missing
    namespace is fine."""
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    if not netns_path(name).exists():
        return
    await asyncio.to_thread(kill_inside, name)
    code, err = await _ip("netns", "del", name)
    if code != 0 and netns_path(name).exists():
        raise NetnsError(f"ip netns del {name}: {err or f'exit code {code}'}")
