# The TCP relay engine's Python face (C core in csrc/relay.c, twin in meshkit/l4/relay.py).
# Included by _fastpath.pyx, so module-level names here carry a _relay prefix.
from libc.stdint cimport uint64_t
from libc.errno cimport errno
from meshkit.includes cimport relay as crelay

import os as _relay_os

_RELAY_REASONS = ("done", "reset", "idle", "closed")


cdef inline object _relay_record(const crelay.relay_finished_t *rec):
    return (rec.pair_id, rec.bytes_c2b, rec.bytes_b2c, _RELAY_REASONS[rec.reason])


cdef inline object _relay_oserror(int err):
    return OSError(err, _relay_os.strerror(err))


cdef class Relay:
    """Moves bytes both ways between (client, backend) socket pairs; see meshkit.l4.relay."""

    cdef crelay.relay_t *_r
    # poll() runs without the GIL; a second thread must not enter the engine meanwhile.
    cdef bint _busy

    def __cinit__(self, Py_ssize_t bufsize=65536):
        if bufsize <= 0:
            raise ValueError("bufsize must be positive")
        self._r = crelay.relay_create(<size_t>bufsize)
        if self._r is NULL:
            raise _relay_oserror(errno)

    def __init__(self, bufsize: int = 65536) -> None:
        pass

    def __dealloc__(self):
        if self._r is not NULL:
            crelay.relay_destroy(self._r)
            self._r = NULL

    cdef inline int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("Relay is in use by another thread")
        return 0

    def fileno(self) -> int:
        return crelay.relay_fileno(self._r)

    def add(self, int client_fd, int backend_fd, double idle_timeout, double now,
            bytes preamble not None = b"") -> int:
        cdef int rc
        self._enter()
        rc = crelay.relay_add_pair(self._r, client_fd, backend_fd, idle_timeout, now,
                                   preamble, len(preamble))
        if rc < 0:
            if rc == -22:  # EINVAL: bad arguments rather than a system failure
                raise ValueError(
                    "invalid fds or preamble longer than bufsize (both fds are closed)")
            raise _relay_oserror(-rc)
        return rc

    def poll(self, double now) -> list:
        cdef const crelay.relay_finished_t *recs = NULL
        cdef int n, i
        self._enter()
        self._busy = True
        with nogil:
            n = crelay.relay_poll(self._r, now, &recs)
        self._busy = False
        if n < 0:
            raise _relay_oserror(-n)
        if n == 0:
            return []
        return [_relay_record(&recs[i]) for i in range(n)]

    def close(self, int pair_id):
        cdef crelay.relay_finished_t rec
        self._enter()
        if not crelay.relay_close_pair(self._r, pair_id, crelay.RELAY_CLOSED, &rec):
            return None
        return _relay_record(&rec)

    def stats(self, int pair_id):
        cdef uint64_t c2b, b2c
        self._enter()
        if not crelay.relay_get_stats(self._r, pair_id, &c2b, &b2c):
            return None
        return (c2b, b2c)

    def __len__(self) -> int:
        return crelay.relay_count_pairs(self._r)

    def close_all(self) -> list:
        cdef const crelay.relay_finished_t *recs = NULL
        cdef int n, i
        self._enter()
        n = crelay.relay_close_all(self._r, &recs)
        return [_relay_record(&recs[i]) for i in range(n)]
