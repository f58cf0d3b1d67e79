# The TCP relay engine's Python face (C core in csrc/relay.c, twin in meshkit/l4/relay.py).
# Included by _fastpath.pyx, so module-level names here carry a _relay prefix.
from libc.stdint cimport uint32_t, uint64_t
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
    # id(table) -> ConnTable of every table with served pairs: the engine calls into their
    # C tables, so they must live as long as those pairs. Pruned when _epoch moves.
    cdef dict _tables
    cdef uint64_t _epoch

    def __init__(self, bufsize: int = 65536) -> None:
        pass

    def __cinit__(self, Py_ssize_t bufsize=65536):
        if bufsize <= 0:
            raise ValueError("bufsize must be positive")
        self._r = crelay.relay_create(<size_t>bufsize)
        if self._r is NULL:
            raise _relay_oserror(errno)
        self._tables = {}

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
              bytes preamble not None = b"", double connect_timeout=3.0, *,
              backend_id=None) -> None:
        cdef bytes raw = _relay_ip(ip)
        cdef int cport = _relay_port(port)
        cdef int rc
        cdef uint32_t bid = 0
        if backend_id is not None:
            bid = _ct_known_id(backend_id)
        self._enter()
        rc = crelay.relay_retry_pair(self._r, pair_id, raw, cport, now,
                                     preamble, len(preamble), connect_timeout)
        if rc < 0:
            if rc == -22:  # EINVAL
                raise ValueError(
                    f"pair {pair_id} is not a failed connect, or invalid address {ip!r}"
                    " or preamble longer than bufsize")
            raise _relay_oserror(-rc)
        if backend_id is not None:
            crelay.relay_set_backend(self._r, pair_id, bid)

    def connect_error(self, int pair_id) -> int:
        return crelay.relay_connect_error(self._r, pair_id)

    def poll(self, double now) -> list:
        cdef const crelay.relay_finished_t *recs = NULL
        cdef int n, i
        self._enter()
        if self._tables:
            # Served pairs update their ConnTable as they finish: keep the GIL, so that no
            # other thread uses the table meanwhile.
            n = crelay.relay_poll(self._r, now, &recs)
        else:
            self._busy = True
            with nogil:
                n = crelay.relay_poll(self._r, now, &recs)
            self._busy = False
        if n < 0:
            raise _relay_oserror(-n)
        if n == 0:
            return []
        out = [_relay_record(&recs[i]) for i in range(n)]
        self._prune()
        return out

    cdef int _prune(self) except -1:
        cdef uint64_t epoch = crelay.relay_table_epoch(self._r)
        cdef ConnTable table
        if epoch == self._epoch:
            return 0
        self._epoch = epoch
        for key, table in list(self._tables.items()):
            if not crelay.relay_table_pairs(self._r, table._t):
                del self._tables[key]
        return 0

    def serve(self, int listen_fd, ConnTable table not None, str dst_ip not None, dst_port,
              double idle_timeout, double connect_timeout, double now,
              int max_count=64) -> tuple:
        cdef c.ct_key dst
        cdef int refused = 0, n
        if max_count < 1:
            raise ValueError("max_count must be positive")
        _ct_make_key(&dst, 6, "0.0.0.0", 0, dst_ip, dst_port)
        self._enter()
        key = id(table)
        if key not in self._tables:
            self._tables[key] = table
        n = crelay.relay_serve(self._r, listen_fd, table._t, &dst, idle_timeout,
                               connect_timeout, now, max_count, &refused)
        if not crelay.relay_table_pairs(self._r, table._t):
            del self._tables[key]
        if n < 0:
            raise _relay_oserror(-n)
        return (n, refused)

    def flow_of(self, int pair_id):
        cdef c.ct_key k
        cdef uint32_t bid
        if not crelay.relay_flow_of(self._r, pair_id, &k, &bid):
            return None
        return (_ct_flow_key(&k), bid)

    def close_backend(self, ConnTable table not None, backend_id) -> list:
        cdef const crelay.relay_finished_t *recs = NULL
        cdef int n, i
        cdef uint32_t bid
        try:
            bid = _ct_known_id(backend_id)
        except KeyError:
            return []
        self._enter()
        n = crelay.relay_close_backend(self._r, table._t, bid, &recs)
        out = [_relay_record(&recs[i]) for i in range(n)]
        self._prune()
        return out

    def live_bytes(self, ConnTable table not None) -> dict:
        cdef uint32_t i, bid
        cdef uint64_t nbytes
        cdef dict out = {}
        for i in range(crelay.relay_slots(self._r)):
            if crelay.relay_served_bytes(self._r, i, table._t, &bid, &nbytes):
                out[bid] = out.get(bid, 0) + nbytes
        return out

    def close(self, int pair_id):
        cdef crelay.relay_finished_t rec
        self._enter()
        if not crelay.relay_close_pair(self._r, pair_id, crelay.RELAY_CLOSED, &rec):
            return None
        self._prune()
        return _relay_record(&rec)

    def stats(self, int pair_id):
        cdef uint64_t c2b, b2c
        self._enter()
        if not crelay.relay_get_stats(self._r, pair_id, &c2b, &b2c):
            return None
        return (c2b, b2c)

    def big_in_use(self) -> int:
        """Bulk-read buffers held now (the relay's memory bound for stalled bulk flows)."""
        self._enter()
        return crelay.relay_big_in_use(self._r)

    def __len__(self) -> int:
        return crelay.relay_count_pairs(self._r)

    def close_all(self) -> list:
        cdef const crelay.relay_finished_t *recs = NULL
        cdef int n, i
        self._enter()
        n = crelay.relay_close_all(self._r, &recs)
        out = [_relay_record(&recs[i]) for i in range(n)]
        self._prune()
        return out
