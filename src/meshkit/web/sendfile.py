"""The HTTP server's send path: buffers and file ranges to a non-blocking socket.

``send_bytes(fd, data, offset)`` sends ``data[offset:]``; ``send_head_and_file(fd, head,
file_fd, offset, length)`` sends a response head and then the file's bytes
``[offset, offset + length)`` with sendfile(2), zero-copy. Both return ``(sent, state)``:

- ``SEND_DONE``: everything was sent;
- ``SEND_AGAIN``: the socket buffer filled up (EAGAIN) after ``sent`` bytes; the caller waits
  for writability and calls again with the rest;
- ``SEND_TRUNCATED`` (files only): the file ended before ``offset + length`` (sendfile(2)
  returned 0), so the body would be shorter than its Content-Length: close the connection.

EINTR is retried and short writes continue; any other error raises OSError.

The functions here are the pure-Python twin of the compiled ones in ``meshkit._fastpath``
(csrc/sendfile.c), with identical behaviour (the C one also sets MSG_MORE on the head so that
head and first file bytes share a segment). ``load_send_path()`` picks the compiled pair
unless MESHKIT_NO_EXTENSIONS=1 or the extension is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from meshkit._ext import load_fastpath

__all__ = [
    "SEND_AGAIN",
    "SEND_DONE",
    "SEND_TRUNCATED",
    "SendPath",
    "load_send_path",
    "send_bytes",
    "send_head_and_file",
]

SEND_DONE = 0
SEND_AGAIN = 1
SEND_TRUNCATED = 2

# sendfile(2) moves at most this much per call on Linux.
_SENDFILE_MAX_CHUNK = 0x7FFFF000


def send_bytes(fd: int, data: bytes, offset: int = 0) -> tuple[int, int]:
    """Send data[offset:] to the non-blocking socket fd: (bytes sent, state)."""
    if offset < 0 or offset > len(data):
        raise ValueError("offset out of range")
    view = memoryview(data)
    done = 0
    want = len(data) - offset
    while done < want:
        try:
            n = os.write(fd, view[offset + done :])
        except InterruptedError:
            continue
        except BlockingIOError:
            return done, SEND_AGAIN
        done += n
    return done, SEND_DONE


def send_head_and_file(
    fd: int, head: bytes, file_fd: int, offset: int, length: int
) -> tuple[int, int]:
    """Send head, then file_fd's bytes [offset, offset + length): (bytes sent, state)."""
    if offset < 0:
        raise ValueError("offset must not be negative")
    head_sent = 0
    if head:
        head_sent, state = send_bytes(fd, head)
        if state != SEND_DONE:
            return head_sent, state
    done = 0
    off = offset
    while done < length:
        want = min(length - done, _SENDFILE_MAX_CHUNK)
        try:
            n = os.sendfile(fd, file_fd, off, want)
        except InterruptedError:
            continue
        except BlockingIOError:
            return head_sent + done, SEND_AGAIN
        if n == 0:
            return head_sent + done, SEND_TRUNCATED
        done += n
        off += n
    return head_sent + done, SEND_DONE


class SendPath(NamedTuple):
    """The pair of send functions in use, and which implementation they are."""

    send_bytes: Callable[[int, bytes, int], tuple[int, int]]
    send_head_and_file: Callable[[int, bytes, int, int, int], tuple[int, int]]
    compiled: bool


def load_send_path(compiled: bool | None = None) -> SendPath:
    """The compiled send functions when available (or asked for), else the twins here.

    compiled=None picks as MESHKIT_NO_EXTENSIONS and the extension allow; True demands the
    compiled ones (ImportError when they are missing); False takes the twins."""
    if compiled is not False:
        fastpath = load_fastpath()
        if fastpath is not None and hasattr(fastpath, "send_head_and_file"):
            return SendPath(fastpath.send_bytes, fastpath.send_head_and_file, True)
        if compiled:
            raise ImportError("meshkit._fastpath with the send path is not available")
    return SendPath(send_bytes, send_head_and_file, False)
