"""Files in a node's data dir: private to the agent's user.

The data dir holds the node's private key, and on managers the raft journal and snapshots
(the replicated state, with the cluster's secrets), so every file in it is created 0600 and
every directory 0700 (the agent runs as root; nobody else has a reason to read them). This is
done per file, not with a process-wide umask: the agent also writes files other users must
read (a network namespace's resolv.conf) and starts tasks that keep the usual umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_opener(path: str, flags: int) -> int:
    """An ``opener`` for ``open()`` that creates files 0600 (an existing file keeps its mode)."""
    return os.open(path, flags, FILE_MODE)


def write_private(path: Path, data: str | bytes) -> None:
    """Replace ``path`` atomically with ``data``, as a 0600 file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a stale tmp file may have had another mode
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def secure_tree(root: Path) -> None:
    """Make every directory under ``root`` (itself included) 0700 and every regular file
    0600: repairs a data dir written by an older version. Symlinks are not followed and
    sockets keep their mode (a local API socket may be meant for a group)."""
    root = Path(root)
    if not root.is_dir():
        return
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, DIR_MODE)
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE:
                os.chmod(p, FILE_MODE)
