"""Folder signatures: whether a folder listing (the `browse` directive) may be served as
rendered before.

A signature covers the folder's own stat and, for every entry, its name, the stat a listing
shows or depends on (size, mtime, ctime, mode, inode, device; of the target for a symlink)
and whether it is a symlink. Two equal signatures mean the listing would be built from the
same data, so its rendered body is reused without building an item per entry (nginx's
autoindex reads and stats every entry per request too; what it saves is the rest).

The compiled one (meshkit._fastpath.dir_signature, csrc/lane.c: readdir + fstatat, an
order-independent sum of per-entry hashes) is used when built; `signature_py` is its twin
(a sorted tuple of the same fields), used under MESHKIT_NO_EXTENSIONS=1. Both raise OSError
when the folder cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable

from meshkit._ext import load_fastpath

__all__ = ["Signature", "load_signature", "signature_py"]

Signature = Callable[[str], Hashable]


def signature_py(path: str) -> Hashable:
    """The twin of the compiled signature: a tuple of every field it covers."""
    st = os.stat(path)
    own = (st.st_size, st.st_mtime_ns, st.st_mode, st.st_ino, st.st_dev, st.st_ctime_ns)
    entries = []
    with os.scandir(path) as it:
        for de in it:
            is_link = de.is_symlink()
            try:
                s = de.stat(follow_symlinks=True)
                fields: tuple[int, ...] = (
                    s.st_size,
                    s.st_mtime_ns,
                    s.st_mode,
                    s.st_ino,
                    s.st_dev,
                    s.st_ctime_ns,
                )
            except OSError:
                fields = ()  # a broken symlink or a name gone
            entries.append((de.name, is_link, fields))
    entries.sort()
    return (own, tuple(entries))


def load_signature(compiled: bool | None = None) -> Signature:
    """The compiled signature (compiled=True, or None when it is built) or the twin."""
    if compiled is not False:
        fastpath = load_fastpath()
        sig = getattr(fastpath, "dir_signature", None) if fastpath is not None else None
        if sig is not None:
            return sig  # type: ignore[no-any-return]
        if compiled:
            raise RuntimeError("the compiled folder signature is not built")
    return signature_py
