"""Reading a small configuration file that a user named, safely.

    data = read_regular_file(path, MIB, "backends file")      # bytes, at most 1 MiB
    text = read_text_file(path, MIB, "Caddyfile")             # the same, decoded as UTF-8

Configuration files (a Caddyfile and its imports, an ingress backends file, an htpasswd file)
are read whole into memory, and some are read again while a server runs. A path that names
something other than a regular file must not be read at all: /dev/zero never ends (gigabytes
of memory), a FIFO blocks the reading thread until someone writes to it, a terminal could
become the controlling tty. So:

- only regular files are read (symlinks are followed: a link to a regular file is fine);
- the file is opened with O_NONBLOCK|O_NOCTTY (opening a FIFO without a writer then returns at
  once instead of blocking) and the check is made with fstat() on the opened descriptor, so
  the file cannot be swapped for something else between the check and the read; a stat()
  before opening keeps devices from being opened at all (opening some has side effects);
- at most max_bytes + 1 bytes are read, so a file that grows while being read is refused too.

Errors are FileReadError (a MeshkitError): one line naming the file and the reason, never its
content.
"""

from __future__ import annotations

import errno
import os
import stat

from meshkit.base.errors import MeshkitError

__all__ = ["KIB", "MIB", "FileReadError", "describe_size", "read_regular_file", "read_text_file"]

KIB = 1024
MIB = 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileReadError(MeshkitError):
    """A file that could not or must not be read. `reason` is the part after the path
    ("No such file or directory", "not a regular file (a FIFO)", ...), for callers that word
    the message their own way."""

    def __init__(self, path: str, what: str, reason: str) -> None:
        self.path = path
        self.what = what
        self.reason = reason
        super().__init__(f"cannot read the {what} {path}: {reason}")


def describe_size(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} bytes"


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return os.strerror(errno.EISDIR)  # "Is a directory", as open()+read() would say
    for test, name in _KINDS:
        if test(mode):
            return f"not a regular file ({name})"
    return "not a regular file"


def read_regular_file(path: str, max_bytes: int, what: str = "file") -> bytes:
    """The content of the regular file at `path` (symlinks followed), at most `max_bytes`.

    Raises FileReadError for a missing or unreadable file, anything that is not a regular file
    (FIFO, device, socket, folder) and a file larger than max_bytes."""
    too_big = f"larger than the {describe_size(max_bytes)} limit for a {what}"
    try:
        # Refuse devices and FIFOs before opening them; the fstat below is the real check.
        reason = _not_regular(os.stat(path).st_mode)
        if reason is not None:
            raise FileReadError(path, what, reason)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileReadError(path, what, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        reason = _not_regular(st.st_mode)
        if reason is not None:
            raise FileReadError(path, what, reason)
        if st.st_size > max_bytes:
            raise FileReadError(path, what, too_big)
        chunks: list[bytes] = []
        left = max_bytes + 1  # one byte more than allowed tells a file that grew past the cap
        while left > 0:
            chunk = os.read(fd, min(left, 256 * KIB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise FileReadError(path, what, too_big)
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(path, what, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def read_text_file(path: str, max_bytes: int, what: str = "file") -> str:
    """read_regular_file, decoded as UTF-8; a file that is not UTF-8 is a FileReadError that
    names the byte offset (not the bytes)."""
    data = read_regular_file(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileReadError(path, what, f"not UTF-8 text (byte {exc.start})") from None
