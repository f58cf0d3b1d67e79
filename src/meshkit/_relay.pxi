# The TCP relay engine's Python face (C core in csrc/relay.c, twin in meshkit/l4/relay.py).
# Included by _fastpath.pyx, so module-level names here carry a _relay prefix.
from libc.stdint cimport uint64_t
from libc.errno cimport errno
from meshkit.includes cimport relay as crelay

import os as _relay_os

_RELAY_REASONS = ("done", "reset", "idle", "closed", "connect")
# Accepts per relay_accept() call; accept() loops for more.
cdef enum:
    _RELAY_ACCEPT_CHUNK = 64


cdef inline object _relay_record(const crelay.relay_finished_t *rec):
    return (rec.pair_id, rec.bytes_c2b, rec.bytes_b2c, _RELAY_REASONS[rec.reason])


cdef inline object _relay_oserror(int err):
    return OSError(err, _relay_os.strerror(err))


cdef inline bytes _relay_ip(str ip):
    cdef bytes raw = ip.encode("ascii", "replace")
    if b"\0" in raw or b"?" in raw:
        raise ValueError(f"not an IPv4 or IPv6 address: {ip!r}")
    return raw


cdef inline int _relay_port(object port) except -1:
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, not {port!r}")
    return <int>port


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

    def accept(self, int listen_fd, int max_count=64) -> list:
        cdef crelay.relay_accepted_t peers[_RELAY_ACCEPT_CHUNK]
        cdef int n, i, want
        cdef list out = []
        if max_count < 1:
            raise ValueError("max_count must be positive")
        while max_count > 0:
            want = max_count if max_count < _RELAY_ACCEPT_CHUNK else _RELAY_ACCEPT_CHUNK
            with nogil:
                n = crelay.relay_accept(listen_fd, peers, want)
            if n < 0:
                if out:
                    break
                raise _relay_oserror(-n)
            for i in range(n):
                out.append((peers[i].fd, peers[i].ip.decode("ascii"), peers[i].port))
            if n < want:
                break
            max_count -= n
        return out

    def connect(self, int client_fd, str ip not None, port, double idle_timeout, double now,
                bytes preamble not None = b"", double connect_timeout=3.0) -> int:
        cdef bytes raw = _relay_ip(ip)
        cdef int cport = _relay_port(port)
        cdef int rc
        self._enter()
        rc = crelay.relay_connect_pair(self._r, client_fd, raw, cport, idle_timeout, now,
                                       preamble, len(preamble), connect_timeout)
        if rc < 0:
            if rc == -22:  # EINVAL
                raise ValueError(
                    f"invalid fd, address {ip!r} or preamble longer than bufsize"
                    " (client_fd is not taken)")
            raise _relay_oserror(-rc)
        return rc

    def retry(self, int pair_id, str ip not None, port, double now,
              bytes preamble not None = b"", double connect_timeout=3.0) -> None:
        cdef bytes raw = _relay_ip(ip)
        cdef int cport = _relay_port(port)
        cdef int rc
        self._enter()
        rc = crelay.relay_retry_pair(self._r, pair_id, raw, cport, now,
                                     preamble, len(preamble), connect_timeout)
        if rc < 0:
            if rc == -22:  # EINVAL
                raise ValueError(
                    f"pair {pair_id} is not a failed connect, or invalid address {ip!r}"
                    " or preamble longer than bufsize")
            raise _relay_oserror(-rc)

    def connect_error(self, int pair_id) -> int:
        return crelay.relay_connect_error(self._r, pair_id)

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
