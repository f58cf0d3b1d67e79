# The client-side HTTP/1 lane, Python face (C helpers in csrc/lane.c, declarations in
# includes/lane.pxd). Its pure-Python twin is meshkit.web.connection.Connection._on_readable
# (connections use it under MESHKIT_NO_EXTENSIONS=1, over TLS, or with MESHKIT_LANE=0).
# Included by _fastpath.pyx, so module-level helper names here carry a _ln prefix.
#
# A Lane is the socket's reader callback: one recv(2) into a static buffer (the loop is
# single-threaded and the bytes are copied out before it returns), and, when the read is one
# whole request head between requests that the response cache knows, the answer without a
# Python frame: a stat(2) per validator, the cached wire bytes (refreshed once a second for
# Date) and one send(2), or head + sendfile(2), then the access log's lines when the entry
# has them (rendered once per client and second, CachedResponse.replay_log). Everything else
# (a cache miss, a stale entry, other on_complete callbacks, a partial send, EOF, errors) goes to the connection's Python methods
# with the bytes read, which decide exactly as the twin does.
# Before the cache, _lr_answer (_lanerules.pxi) answers the heads of sites the rule table
# (meshkit.web.ruletable) compiled.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport strlen
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

import os as _ln_os

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef char _ln_buf[65536]
LANE_RECV_SIZE = 65536
LANE_MAX_HEAD = 4096  # meshkit.web.respcache.MAX_HEAD (a test checks they agree)
cdef Py_ssize_t _LN_MAX_HEAD = 4096
cdef uint64_t _LN_FILE_BUDGET = 8 << 20  # meshkit.web.output._FILE_BUDGET
cdef int _LN_NEW = 0  # ConnState.NEW
cdef int _LN_IDLE = 1  # ConnState.IDLE
cdef int _LN_DL_IDLE = 3  # meshkit.web.output.DL_IDLE
cdef object _ln_cached_event = None  # connstate.Event.CACHED, set by Lane's first use


cdef int _ln_valid(object validators) except -1:
    """1 when every validator's file stats the same (CachedResponse.valid), else 0; -1 with
    an exception only for a malformed validator."""
    cdef const char *p
    cdef Py_ssize_t plen
    for v in validators:
        path, ino, dev, size, mtime_ns, ctime_ns = v
        try:
            p = PyUnicode_AsUTF8AndSize(path, &plen)
        except UnicodeError:
            return 0  # a surrogate-escaped name: the twin's os.stat decides
        if <size_t>plen != strlen(p):
            return 0  # an embedded NUL: os.stat refuses it
        if not clane.lane_stat_same(p, <uint64_t>ino, <uint64_t>dev, <int64_t>size,
                                    <int64_t>mtime_ns, <int64_t>ctime_ns):
            return 0
    return 1


cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen)


cdef Py_ssize_t _ln_body_head_end(bytes data):
    """Where the request head of a read that may carry a small body ends (the offset just
    past its blank line), for the client lanes' body hooks; 0 when the read does not begin
    with a P (POST, PUT, PATCH) or holds no head end within the lane's head size."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n < 20 or p[0] != c'P':
        return 0
    cdef const char *e = <const char *>memmem(
        p, <size_t>(n if n < _LN_MAX_HEAD else _LN_MAX_HEAD), b"\r\n\r\n", 4)
    return 0 if e == NULL else e + 4 - p


cdef class Lane:
    """The reader of one plain HTTP/1 connection (meshkit.web.connection.Connection)."""

    cdef object conn
    cdef object server
    cdef int fd
    cdef readonly Py_ssize_t hits  # requests answered here (tests check the lane ran)
    cdef readonly Py_ssize_t rule_hits  # of those, answered from the rule table
    cdef object rtable  # the port's _LrTable (_lanerules.pxi), made on first use
    cdef object pl  # the proxy lane's memo of this connection (_proxylane.pxi _PLConn)

    def __cinit__(self, conn, server, int fd):
        self.conn = conn
        self.server = server
        self.fd = fd
        self.hits = 0

    def on_readable(self):
        cdef ssize_t n = clane.lane_recv(self.fd, _ln_buf, sizeof(_ln_buf))
        conn = self.conn
        if n < 0:
            if n == -EAGAIN:
                return
            conn._abort()
            return
        if n == 0:
            conn._on_eof()
            return
        if n <= _LN_MAX_HEAD and clane.lane_ends_head(_ln_buf, <size_t>n):
            if _lr_answer(self, _ln_buf, n):  # the rule table (_lanerules.pxi), no copy
                return
            data = PyBytes_FromStringAndSize(_ln_buf, n)
            # proxy lane hook (wip-proxylane): a proxied request without a body is sent
            # upstream from C (_proxylane.pxi); 0 when it does not apply. Before the cache,
            # which never holds a proxied answer (one identity check for other routers).
            if _pl_take(self, data):
                return
            if self._from_cache(data):
                return
            # FastCGI lane hook (wip-fcgilane): a GET/HEAD to a `fastcgi` site is sent to
            # php-fpm from C (_fcgilane.pxi); 0 when it does not apply
            if _fl_take(conn, self.server, self.fd, data):
                return
        else:
            data = PyBytes_FromStringAndSize(_ln_buf, n)
            # the client lanes' hooks for a request with a body: a POST/PUT/PATCH head and
            # its whole small Content-Length body in this read go upstream or to php-fpm
            # from C (_pl_take_body, _fl_take_body); 0 when they do not apply (one byte
            # compared for most reads)
            if _pl_take_body(self, data) or _fl_take_body(conn, self.server, self.fd, data):
                return
        conn._on_data(data)

    cdef int _from_cache(self, bytes data) except -1:
        """Answer data (one request head) from the response cache: 1 when answered (or
        handed to the connection's own cached-answer methods), 0 to read it normally."""
        global _ln_cached_event
        cdef size_t sent = 0
        cdef uint64_t fsent = 0
        cdef int state = csend.SEND_DONE
        cdef int rc
        cdef int64_t second
        cdef double now
        cdef int file_fd
        cdef uint64_t left
        server = self.server
        if not server._caching or server._shutting:
            return 0
        conn = self.conn
        cdef int cstate = conn._state
        if cstate > _LN_IDLE or conn._queue or conn._out or conn._streaming:
            return 0
        hit = server._cache.entries.get(data)
        if hit is None or not _ln_valid(hit.validators):
            return 0  # a miss, or stale: the twin drops it and reads the head
        if hit.closes:  # the request asked to close: the connection's own method closes
            conn._answer_cached(hit)
            return 1
        replay = None
        if hit.callbacks:
            replay = hit.replay
            if replay is None:
                conn._answer_cached(hit)  # callbacks that need the request copy
                return 1
        now = clane.lane_now()
        second = <int64_t>now
        wire = hit.wire if hit.second == second else hit.refresh(second)
        conn.requests += 1
        if cstate == _LN_NEW:
            if _ln_cached_event is None:
                from meshkit.web.connstate import Event
                _ln_cached_event = Event.CACHED
            conn._fire(_ln_cached_event)
        file_fd = hit.fd
        if file_fd < 0:
            rc = csend.send_bytes(self.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                                  &sent, &state)
            if rc < 0 or state != csend.SEND_DONE:
                conn._cached_bytes_sent(hit, wire, now, None if rc < 0 else sent, state)
                return 1
        else:
            head = hit.head
            left = hit.file_left
            if left > _LN_FILE_BUDGET:
                conn._cached_file_sent(hit, now, -1, csend.SEND_AGAIN)
                return 1
            rc = csend.send_head_and_file(self.fd, PyBytes_AS_STRING(head),
                                          <size_t>PyBytes_GET_SIZE(head), file_fd,
                                          <int64_t>hit.file_off, left, &fsent, &state)
            if rc < 0 or state != csend.SEND_DONE:
                conn._cached_file_sent(hit, now, None if rc < 0 else fsent, state)
                return 1
        conn._deadline = server._now + server._idle_timeout
        conn._dkind = _LN_DL_IDLE
        self.hits += 1
        if replay is not None:  # the access log's lines (CachedResponse.replay_log)
            hit.replay_log(conn._remote_addr, conn._remote_port, conn._local_addr,
                           conn._local_port, now)
        return 1


def dir_signature(str path not None):
    """(signature, entries) of the folder at path (csrc/lane.c lane_dir_sig): equal as long
    as neither the folder nor any entry's name, size, times, mode, inode or symlink flag
    changes. OSError when the folder cannot be read. The twin is
    meshkit.web.directives.browse.dir_signature_py."""
    cdef uint64_t sig = 0
    cdef uint64_t count = 0
    cdef bytes raw = _ln_os.fsencode(path)
    cdef const char *p = raw
    cdef int rc
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    with nogil:
        rc = clane.lane_dir_sig(p, &sig, &count)
    if rc < 0:
        raise OSError(-rc, _ln_os.strerror(-rc), path)
    return (sig, count)


def stat_matches(tuple sig not None):
    """Whether the file of sig = (path, ino, dev, size, mtime_ns, ctime_ns) (a
    message.Validator, filecache.Entry.sig) still stats the same, with one stat(2) and no
    stat_result: True, or False (changed, gone, or a name only os.stat may judge)."""
    return _ln_valid((sig,)) == 1
