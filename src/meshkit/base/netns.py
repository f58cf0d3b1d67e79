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
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
NAME_PREFIX = "mk-"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
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


def bind_resolv_conf(path: bytes) -> None:
    """In a child before exec: a mount namespace of its own (mounts not propagated back),
    with `path` bound over /etc/resolv.conf."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --make-rslave /: {os.strerror(err)}")
    if _libc.mount(path, b"/etc/resolv.conf", None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {path.decode()} over /etc/resolv.conf: {os.strerror(err)}")


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
