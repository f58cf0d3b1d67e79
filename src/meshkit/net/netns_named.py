"""Named network namespaces (/run/netns/<name>, as ``ip netns`` makes them): create, delete,
run a function inside one.

Namespaces are entered only from short-lived threads made for the purpose (``in_netns``):
setns(2) changes the calling thread alone, so no caller thread is ever left in another
namespace, and several agents (each in its own "host" namespace) may use this at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from meshkit.base.netns import CLONE_NEWNET, setns
from meshkit.net.netlink import LinkError, step

NETNS_DIR = "/run/netns"
NETNS_RUN_B = NETNS_DIR.encode()

_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_NETLINK_ROUTE = 0

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    """Raise OSError with errno when a libc call returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    """/run/netns/<name>, refusing names that would leave that directory."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise LinkError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_DIR, name)


def open_netns(name: str) -> int:
    """An fd on the named namespace; LinkError naming it when it does not exist."""
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LinkError(f"network namespace {name} does not exist ({path} is missing)") from None
    except OSError as exc:
        raise LinkError(f"open network namespace {name}: {exc.strerror}") from exc


def run_in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread and return its result or raise its exception there."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed back to the caller below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="meshkit-netns", daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside network namespace ``name`` (in a thread made for it) and return
    its result. Sockets and TAP devices ``fn`` makes belong to that namespace for good."""
    fd = open_netns(name)

    def entered() -> T:
        try:
            setns(fd)  # NetnsError is an OSError: worded below as before
        except OSError as exc:
            raise LinkError(
                f"enter network namespace {name}: {os.strerror(exc.errno or 0)}"
            ) from exc
        return fn()

    try:
        return run_in_thread(entered)
    finally:
        os.close(fd)


def caller_netns_label() -> str:
    """The name under /run/netns of the calling thread's namespace, else a description."""
    try:
        here = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
        for entry in os.scandir(NETNS_DIR):
            with contextlib.suppress(OSError):
                st = entry.stat()
                if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                    return entry.name
    except OSError:
        pass
    return "the caller's namespace"


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _is_netns_mount(path: str) -> bool:
    """True when ``path`` is a bind mount of a network namespace (lives on nsfs)."""
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except OSError:
        return False


def _share_rundir() -> None:
    """Make /run/netns a shared mount, as ``ip netns add`` does, so namespace mounts made
    here show in other mount namespaces too."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    bound = False
    while _libc.mount(b"", NETNS_RUN_B, b"none", _MS_SHARED | _MS_REC, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL or bound:
            raise OSError(err, f"make {NETNS_DIR} shared: {os.strerror(err)}")
        _check(_libc.mount(NETNS_RUN_B, NETNS_RUN_B, b"none", _MS_BIND | _MS_REC, None),
               f"bind {NETNS_DIR}")  # fmt: skip
        bound = True


def make_netns(name: str) -> None:
    """Make network namespace ``name`` (/run/netns/<name>, like ``ip netns add``); an
    existing one is kept, a stale unmounted file is replaced. Its ``lo`` is left as the
    kernel made it: ``ensure_netns`` (meshkit.net.nslinks, with the links) brings it up."""
    path = netns_path(name)
    if _is_netns_mount(path):
        return
    with step(f"create network namespace {name}", NETNS_DIR):
        _share_rundir()
        with contextlib.suppress(FileNotFoundError):
            _libc.umount2(path.encode(), _MNT_DETACH)
            os.unlink(path)
        # FileExistsError: another thread is making the same namespace; checked below
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

        def make() -> None:
            # unshare() gives only this throwaway thread the new namespace
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(src, path.encode(), b"none", _MS_BIND, None), "mount")

        if not _is_netns_mount(path):
            try:
                run_in_thread(make)
            except OSError:
                if not _is_netns_mount(path):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    raise


def delete_netns(name: str) -> None:
    """Remove network namespace ``name``; a missing one is fine. The kernel frees it (and
    its links) once no process or open fd holds it."""
    path = netns_path(name)
    if not os.path.lexists(path):
        return
    with step(f"delete network namespace {name}", NETNS_DIR):
        if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise OSError(err, os.strerror(err))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def netlink_socket_in(name: str) -> int:
    """A raw rtnetlink socket fd living in namespace ``name``."""

    def make() -> int:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             _NETLINK_ROUTE)  # fmt: skip
        return sock.detach()

    return in_netns(name, make)
