"""Named network namespaces for tasks: create one (loopback up), enter it, empty it, delete it.

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


class NetnsError(Exception):
    """A namespace step failed; the message names the command and what ip said."""


def netns_name(task_id: str) -> str:
    """The namespace a task owns."""
    return f"{NAME_PREFIX}{task_id}"


def netns_path(name: str) -> Path:
    """Where ``ip netns add`` bind-mounts the namespace."""
    return NETNS_DIR / name


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open on ``fd`` (for preexec_fn)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


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
