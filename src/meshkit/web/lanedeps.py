"""Validators (message.Validator) that pin what a path is, for answers the lane's rule table
keeps (meshkit.web.ruletable): that a file does not exist (a 404, an `ext` extension that was
tried and missed), or what an existing non-file is (a folder named like `page.html`).

A missing path is pinned by the deepest existing folder on its way: creating the path (or
any folder on the way) changes that folder's mtime and ctime. Anything whose pin would not be
exact gives None (the answer is then never kept, the chain answers it every time): a
symbolic link on the way (its target may appear elsewhere), a path outside the root, and a
folder or file changed within the last clock tick (`racy_ns`: a change within the same tick
may leave its timestamps as they were; what fileserver._RACY_NS says for folders).
"""

from __future__ import annotations

import os
import stat
import time

from meshkit.web.message import Validator

__all__ = ["LANE_FILL", "LANE_FILL_LOGGED", "LANE_FILL_TRYING", "merge", "missing", "pin", "sig"]

# request.vars' mark of a run by the lane's rule table (ruletable.fill): the pins here are
# made only then (the chain's own answers would pay a failing lstat(2) or two per 404 for
# validators nothing else keeps: respcache keeps no 404s, and the router clears validators
# on `ext` sites), and an error log line is not written then but marks the run LOGGED (its
# answer is not kept; the chain runs the request again and writes the line)
LANE_FILL = "lane.fill"
LANE_FILL_TRYING = "trying"
LANE_FILL_LOGGED = "logged"


def sig(path: str, racy_ns: int, st: os.stat_result | None = None) -> Validator | None:
    """`path`'s validator (from `st` when given, else os.stat), or None when it cannot be
    stated or changed too recently to be trusted."""
    if st is None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= racy_ns:
        return None
    return (path, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def missing(fs: str, prefix: str, racy_ns: int) -> tuple[Validator, ...] | None:
    """Validators under which `fs` (a path under the root `prefix`, "" for "/") stays
    missing, or None when it exists (lstat: a dangling link counts) or cannot be pinned."""
    root = prefix or "/"
    if fs != root and not fs.startswith(root.rstrip("/") + "/"):
        return None
    try:
        os.lstat(fs)
        return None
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError):
        return None
    p = fs
    while True:
        p = p[: p.rfind("/")]
        if len(p) <= len(prefix):
            one = sig(root, racy_ns)  # the root itself may be a link (a deploy): followed
            return None if one is None else (one,)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError):
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
        one = sig(p, racy_ns, st)
        return None if one is None else (one,)


def pin(fs: str, prefix: str, racy_ns: int) -> tuple[Validator, ...] | None:
    """Validators under which `fs` stays what it is now (missing, or the same non-link
    file or folder), or None."""
    try:
        st = os.lstat(fs)
    except (FileNotFoundError, NotADirectoryError):
        return missing(fs, prefix, racy_ns)
    except (OSError, ValueError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    one = sig(fs, racy_ns, st)
    return None if one is None else (one,)


def merge(
    validators: tuple[Validator, ...] | None, more: tuple[Validator, ...] | None
) -> tuple[Validator, ...] | None:
    """Both sets (None when either is None: the answer cannot be kept), without repeats."""
    if validators is None or more is None:
        return None
    return tuple(dict.fromkeys(validators + more))
