"""A task's mounts, hostname and resolv.conf: checked by the agent, applied by the child.

``prepare`` runs in the agent before the launch and turns the spec's mounts into
``MountPlan``s, or raises ``MountError`` with the words `service ps` shows ("mount /data:
source /srv/data does not exist on node w1"): a bind source must exist; a volume is the
folder ``DATA_DIR/volumes/NAME/_data`` (made on first use, as Docker's local driver keeps
them) and must be writable unless mounted readonly; a missing target is made (a folder, or an
empty file for a bind of a file: tasks share the node's root filesystem, so it shows there as
an empty mount point). ``apply`` runs in the child, in its own mount namespace, before exec:
binds (``readonly`` remounts them read-only) and tmpfs mounts (``size=``, ``mode=``), parents
before children. ``set_hostname`` gives the child a UTS namespace of its own with the task's
hostname. ``resolv_conf`` writes the task's resolv.conf text from the node's (or the overlay's)
and the spec's ``dns`` (nameservers, search domains, options).
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOLUMES_DIR = "volumes"
VOLUME_DATA = "_data"
CLONE_NEWUTS = 0x04000000
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
TASK_DNS = "127.0.0.11"  # the task's own DNS server on an overlay (meshkit.mesh)

_libc = ctypes.CDLL(None, use_errno=True)


class MountError(Exception):
    """A mount cannot be made; the message is the task's error as the user reads it."""


@dataclass(frozen=True)
class MountPlan:
    """One mount, resolved on this node: what the child's mount(2) calls need."""

    kind: str  # bind | volume | tmpfs
    source: bytes
    target: bytes
    readonly: bool
    data: bytes | None  # tmpfs options


def volume_path(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / VOLUMES_DIR / name / VOLUME_DATA


def prepare(mounts: Iterable[Mapping[str, Any]], data_dir: Path, node: str) -> list[MountPlan]:
    """Check and resolve a task's mounts on this node (see the module docstring)."""
    plans = []
    for m in sorted(mounts, key=lambda m: str(m["target"]).rstrip("/").count("/")):
        target = str(m["target"])
        where = f"mount {target}"
        kind = str(m["type"])
        readonly = bool(m.get("readonly"))
        data: bytes | None = None
        if kind == "bind":
            source = str(m["source"])
            if not os.path.exists(source):
                raise MountError(f"{where}: source {source} does not exist on node {node}")
        elif kind == "volume":
            folder = volume_path(data_dir, str(m["source"]))
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o755)
            except OSError as exc:
                raise MountError(
                    f"{where}: cannot make volume {m['source']} at {folder} on node {node}: "
                    f"{exc.strerror or exc}"
                ) from None
            if not readonly and not _writable(folder):
                raise MountError(f"{where}: volume folder {folder} is not writable on node {node}")
            source = str(folder)
        else:
            source = "tmpfs"
            opts = []
            if m.get("tmpfs_size"):
                opts.append(f"size={int(m['tmpfs_size'])}")
            opts.append(f"mode={int(m.get('tmpfs_mode') or 0o1777):o}")
            data = ",".join(opts).encode()
        _make_target(target, source if kind == "bind" else "", where, node)
        plans.append(MountPlan(kind, os.fsencode(source), os.fsencode(target), readonly, data))
    return plans


def _writable(folder: Path) -> bool:
    """Really writable (os.access says yes to root even on a read-only filesystem)."""
    probe = folder.parent / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _make_target(target: str, bind_source: str, where: str, node: str) -> None:
    if os.path.lexists(target):
        if bind_source and os.path.isdir(bind_source) != os.path.isdir(target):
            kind = "folder" if os.path.isdir(bind_source) else "file"
            raise MountError(f"{where}: the source is a {kind} and the target is not, on {node}")
        return
    try:
        if bind_source and not os.path.isdir(bind_source):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        else:
            os.makedirs(target, exist_ok=True)
    except OSError as exc:
        raise MountError(
            f"{where}: cannot make the mount point on node {node}: {exc.strerror or exc}"
        ) from None


def _mount(src: bytes, dst: bytes, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    if _libc.mount(src, dst, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {dst.decode(errors='replace')}: {os.strerror(err)}")


def mount_fs(source: bytes, target: bytes, fstype: bytes, data: bytes | None) -> None:
    """mount(2) a filesystem (OSError naming the target when refused)."""
    _mount(source, target, fstype, MS_NOSUID | MS_NODEV, data)


def apply(plans: Iterable[MountPlan]) -> None:
    """In the child, in its own mount namespace: make each mount (OSError names it)."""
    for p in plans:
        if p.kind == "tmpfs":
            flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if p.readonly else 0)
            _mount(b"tmpfs", p.target, b"tmpfs", flags, p.data)
            continue
        _mount(p.source, p.target, None, MS_BIND | MS_REC, None)
        if p.readonly:
            _mount(b"none", p.target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)


def set_hostname(name: bytes) -> None:
    """In the child: a UTS namespace of its own, named ``name``."""
    if _libc.unshare(CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUTS): {os.strerror(err)}")
    if _libc.sethostname(name, len(name)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname {name.decode(errors='replace')}: {os.strerror(err)}")


def has_own_namespaces(pid: int) -> bool:
    """Whether process ``pid`` has a mount or UTS namespace other than this process's."""
    try:
        return any(
            os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino
            for ns in ("mnt", "uts")
        )
    except OSError:
        return False


def enter_namespaces(pid: int) -> None:
    """In a child (a health check): join the mount and UTS namespaces of the task whose
    process is ``pid``, so that it sees the task's mounts, secrets, resolv.conf and hostname."""
    for ns, flag in (("mnt", CLONE_NEWNS), ("uts", CLONE_NEWUTS)):
        fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, flag) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {ns} of pid {pid}: {os.strerror(err)}")
        finally:
            os.close(fd)


def resolv_conf(base: str, dns: Mapping[str, Any]) -> str:
    """The task's resolv.conf: ``base`` (the node's, or the overlay's pointing at the task's
    DNS server) with the spec's nameservers, search domains and options. On an overlay the
    task's DNS server stays first (it answers service names); given servers follow it."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in base.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    wanted = [str(s) for s in dns.get("nameservers") or []]
    if wanted:
        servers = ([TASK_DNS] if TASK_DNS in servers else []) + wanted
    if dns.get("search"):
        search = [str(s) for s in dns["search"]]
    for opt in dns.get("options") or []:
        name = str(opt).partition(":")[0]
        options = [o for o in options if o.partition(":")[0] != name] + [str(opt)]
    lines = ["# written by meshkit for this task"]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def has_dns(dns: Mapping[str, Any] | None) -> bool:
    return bool(dns) and any(dns.get(k) for k in ("nameservers", "search", "options"))  # type: ignore[union-attr]


# -- volumes of this node ------------------------------------------------------------------------


def list_volumes(data_dir: Path) -> list[str]:
    root = Path(data_dir) / VOLUMES_DIR
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


def remove_volume(data_dir: Path, name: str) -> None:
    """Remove a volume folder and what it holds (the caller checked that no task uses it)."""
    path = Path(data_dir) / VOLUMES_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(name)
    shutil.rmtree(path)
