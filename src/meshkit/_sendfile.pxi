# The HTTP server's send path, Python face (C core in csrc/sendfile.c, declarations in
# includes/sendfile.pxd, pure-Python twin in meshkit/web/sendfile.py).
# Included by _fastpath.pyx, so module-level helper names here carry a _sf prefix.
from libc.stdint cimport int64_t, uint64_t
from meshkit.includes cimport sendfile as csend

import os as _sf_os

SEND_DONE = csend.SEND_DONE
SEND_AGAIN = csend.SEND_AGAIN
SEND_TRUNCATED = csend.SEND_TRUNCATED


cdef inline object _sf_oserror(int err):
    return OSError(err, _sf_os.strerror(err))


def send_bytes(int fd, bytes data not None, Py_ssize_t offset=0):
    """Send data[offset:] to the non-blocking socket fd: (bytes sent, state).

    state is SEND_DONE or SEND_AGAIN (wait for writability, then call again with the rest);
    a socket error raises OSError."""
    cdef size_t sent = 0
    cdef int state = csend.SEND_DONE
    cdef int rc
    cdef Py_ssize_t n = len(data)
    if offset < 0 or offset > n:
        raise ValueError("offset out of range")
    rc = csend.send_bytes(fd, (<const char *>data) + offset, <size_t>(n - offset), &sent,
                          &state)
    if rc < 0:
        raise _sf_oserror(-rc)
    return (sent, state)


def send_head_and_file(int fd, bytes head not None, int file_fd, int64_t offset,
                       uint64_t length):
    """Send head, then file_fd's bytes [offset, offset + length): (bytes sent, state).

    Bytes sent count head and file bytes. state is SEND_DONE, SEND_AGAIN (wait for
    writability; call again with what is left) or SEND_TRUNCATED (the file ended early:
    close the connection); a socket or file error raises OSError."""
    cdef uint64_t sent = 0
    cdef int state = csend.SEND_DONE
    cdef int rc
    cdef const char *h = head
    cdef size_t hlen = len(head)
    if offset < 0:
        raise ValueError("offset must not be negative")
    with nogil:
        rc = csend.send_head_and_file(fd, h, hlen, file_fd, offset, length, &sent, &state)
    if rc < 0:
        raise _sf_oserror(-rc)
    return (sent, state)
