# The client lane's rule table (meshkit.web.ruletable compiles it; Lane in _lane.pxi calls
# _lr_answer for a request head the response cache does not hold). Included by _fastpath.pyx
# after _lane.pxi, so module-level names here carry an _lr prefix.
#
# Per request, without a Python call: hh_scan (csrc/http_head.c, every rule of the head
# lane), the method, version and keep-alive, the target (lane_plain_path), the site by Host
# and path prefix (memoised per Host value), the prefixes left to the chain (browse,
# markdown), the fields the answer depends on (lane_field_kind), the path's answer and one
# stat(2) of its validator, then one send(2) or head + sendfile(2). The answer's bytes are
# made once per second from heads serialised by the chain's own http1.serialize_head
# (ruletable.resolve); anything else returns 0 and the connection reads the head as before.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memchr
from meshkit.includes cimport http_head as chh
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

cdef object _lr_mod = None  # meshkit.web.ruletable, imported on first use
cdef object _lr_http_date = None  # meshkit.web.http1.http_date
cdef int _LR_FIELDS = 64  # fields a head may have here (more: the chain reads it)
cdef Py_ssize_t _LR_MAX_ANSWERS = 4096  # per site; the table starts over beyond it
cdef Py_ssize_t _LR_MAX_HOSTS = 1024
cdef int _LR_FILE = 0  # ruletable.KIND_FILE
cdef int _LR_REDIRECT = 1  # ruletable.KIND_REDIRECT
cdef Py_ssize_t _LR_INLINE_BELOW = 16384  # respcache.ZERO_COPY_FROM (output.py's choice)


cdef class _LrAnswer:
    """ruletable.Answer in C fields, with its wire bytes for the current second."""

    cdef object ans
    cdef int kind
    cdef bytes vpath
    cdef uint64_t ino, dev
    cdef int64_t vsize, mtime_ns, ctime_ns
    cdef int64_t second
    cdef bytes pre, post, pre304, post304
    cdef bytes wire_get, wire_head, wire_304
    cdef bytes etag, last_modified
    cdef object data
    cdef int fd
    cdef int64_t size
    cdef bint inline

    def __cinit__(self, ans):
        self.ans = ans
        self.kind = ans.kind
        path, ino, dev, size, mtime_ns, ctime_ns = ans.vsig
        self.vpath = _ln_os.fsencode(path)
        self.ino = ino
        self.dev = dev
        self.vsize = size
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.second = -1
        mark = _lr_mod.DATE_MARK.encode("latin-1")
        self.pre, _, self.post = (<bytes>ans.head).partition(mark)
        self.pre304, _, self.post304 = (<bytes>ans.head304).partition(mark)
        self.etag = ans.etag
        self.last_modified = ans.last_modified
        self.data = ans.data
        self.fd = ans.fd
        self.size = ans.size
        self.inline = self.data is not None and (
            PyBytes_GET_SIZE(self.data) < _LR_INLINE_BELOW or self.fd < 0)

    cdef int valid(self) except -1:
        if b"\0" in self.vpath:
            return 0
        return clane.lane_stat_same(self.vpath, self.ino, self.dev, self.vsize,
                                    self.mtime_ns, self.ctime_ns)

    cdef int refresh(self, int64_t second) except -1:
        date = (<str>_lr_http_date(second)).encode("latin-1")
        head = self.pre + date + self.post
        self.wire_head = head
        if self.kind == _LR_FILE:
            self.wire_get = head + self.data if self.inline else head
            self.wire_304 = self.pre304 + date + self.post304
        else:
            self.wire_get = head
        self.second = second
        return 0


class _LrPartial:
    """What Connection._cached_bytes_sent / _cached_file_sent read from a remembered
    response (respcache.CachedResponse), for a lane answer the socket did not take whole."""

    __slots__ = ("acquire", "body", "callbacks", "fd", "file_left", "file_off", "head",
                 "release", "replay", "response")

    def __init__(self, head, body, fd, size, entry):
        self.head = head
        self.body = body
        self.fd = fd
        self.file_off = 0
        self.file_left = size
        self.acquire = entry.acquire if entry is not None else None
        self.release = entry.release if entry is not None else None
        self.callbacks = None
        self.replay = None
        self.response = None


cdef class _LrSite:
    cdef object rules  # ruletable.SiteRules
    cdef tuple prefixes  # bytes: paths left to the chain
    cdef dict answers  # path bytes -> _LrAnswer

    def __cinit__(self, rules):
        self.rules = rules
        self.prefixes = tuple(p.encode("latin-1") for p in rules.python_prefixes)
        self.answers = {}

    cdef void drop_all(self):
        for a in self.answers.values():
            (<_LrAnswer>a).ans.release()
        self.answers.clear()

    cdef _LrAnswer fill(self, bytes path):
        """The path's answer from ruletable.resolve (None: the chain answers)."""
        ans = _lr_mod.resolve(self.rules, path.decode("latin-1"))
        if ans is None:
            return None
        if len(self.answers) >= _LR_MAX_ANSWERS:
            self.drop_all()
        a = _LrAnswer(ans)
        self.answers[path] = a
        return a


cdef class _LrTable:
    cdef object handler
    cdef dict by_route  # id(route) -> _LrSite
    cdef dict by_host  # Host value bytes -> [(route path bytes, _LrSite or None)]

    def __cinit__(self, handler, compiled):
        self.handler = handler
        self.by_route = {}
        self.by_host = {}
        if compiled:
            for key, rules in compiled.items():
                self.by_route[key] = _LrSite(rules)

    cdef list routes(self, bytes host):
        found = self.by_host.get(host)
        if found is None:
            if len(self.by_host) >= _LR_MAX_HOSTS:
                self.by_host.clear()
            found = []
            for route in self.handler._candidates(host.decode("latin-1")):
                found.append((route.address.path.encode("utf-8"),
                              self.by_route.get(id(route))))
            self.by_host[host] = found
        return found


cdef _LrTable _lr_table_for(object handler):
    global _lr_mod, _lr_http_date
    if _lr_mod is None:
        from meshkit.web import http1, ruletable
        _lr_mod = ruletable
        _lr_http_date = http1.http_date
    return _LrTable(handler, _lr_mod.rules_for(handler))


cdef inline bint _lr_starts(const char *p, Py_ssize_t n, bytes prefix):
    cdef Py_ssize_t m = PyBytes_GET_SIZE(prefix)
    return m <= n and memcmp(p, PyBytes_AS_STRING(prefix), m) == 0


cdef inline bint _lr_is(const char *p, Py_ssize_t n, bytes value):
    return n == PyBytes_GET_SIZE(value) and memcmp(p, PyBytes_AS_STRING(value), n) == 0


cdef int _lr_not_modified(const char *v, Py_ssize_t n, _LrAnswer a) except -2:
    """If-None-Match against the answer's ETag: 1 match, 0 no match, -1 the chain decides."""
    while n > 0 and (v[0] == 32 or v[0] == 9):
        v += 1
        n -= 1
    while n > 0 and (v[n - 1] == 32 or v[n - 1] == 9):
        n -= 1
    if (n == 1 and v[0] == 42) or _lr_is(v, n, a.etag):
        return 1
    if memchr(v, 44, n) != NULL or memchr(v, 87, n) != NULL:  # a list, or a weak tag
        return -1
    return 0


cdef int _lr_answer(Lane lane, bytes data) except -1:
    """Answer data (one request head) from the rule table: 1 when answered (or handed to
    the connection's send-completion methods), 0 to read it normally."""
    global _ln_cached_event
    cdef chh.hh_field fields[64]
    cdef chh.hh_limits lim
    cdef chh.hh_head head
    cdef const char *buf = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char *target
    cdef Py_ssize_t plen, i, k
    cdef int inm = -1
    cdef int ims = -1
    cdef int kind, rc
    cdef int state = csend.SEND_DONE
    cdef size_t sent = 0
    cdef uint64_t fsent = 0
    cdef _LrTable tbl
    cdef _LrSite site = None
    cdef _LrAnswer a
    cdef double now
    cdef int64_t second
    cdef bint not_modified = False
    server = lane.server
    handler = server._handler
    tbl = <_LrTable>lane.rtable if lane.rtable is not None else None
    if tbl is None or tbl.handler is not handler:
        tbl = _lr_table_for(handler)
        lane.rtable = tbl
    if not tbl.by_route or server._shutting:
        return 0
    conn = lane.conn
    cdef int cstate = conn._state
    if cstate > _LN_IDLE or conn._queue or conn._out or conn._streaming:
        return 0
    lim.header_limit = <size_t>server._header_limit
    lim.max_fields = <size_t>min(<Py_ssize_t>server._max_fields, _LR_FIELDS - 1)
    lim.max_field_line = <size_t>server._max_field_line
    rc = chh.hh_scan(buf, <size_t>n, 0, &lim, &head, fields)
    if rc != chh.HH_ACCEPT or <Py_ssize_t>head.end != n:
        return 0
    if head.minor != 1 or not head.keep_alive or head.host < 0:
        return 0
    cdef bint is_head
    if head.method_len == 3 and memcmp(buf + head.method, b"GET", 3) == 0:
        is_head = False
    elif head.method_len == 4 and memcmp(buf + head.method, b"HEAD", 4) == 0:
        is_head = True
    else:
        return 0
    target = buf + head.target
    plen = clane.lane_plain_path(target, head.target_len)
    if plen < 0:
        return 0
    for i in range(<Py_ssize_t>head.nfields):
        kind = clane.lane_field_kind(buf + fields[i].name, fields[i].name_len)
        if kind == clane.LANE_FIELD_NONE:
            continue
        if kind == clane.LANE_FIELD_OTHER:
            return 0
        if kind == clane.LANE_FIELD_INM:
            if inm >= 0:
                return 0
            inm = <int>i
        else:
            if ims >= 0:
                return 0
            ims = <int>i
    host = PyBytes_FromStringAndSize(buf + fields[head.host].value, fields[head.host].value_len)
    for prefix, s in tbl.routes(host):
        if _lr_starts(target, plen, <bytes>prefix):
            site = s
            break
    if site is None:
        return 0
    for prefix in site.prefixes:
        if _lr_starts(target, plen, <bytes>prefix):
            return 0
    path = PyBytes_FromStringAndSize(target, plen)
    a = site.answers.get(path)
    if a is None or not a.valid():
        if a is not None:
            del site.answers[path]
            a.ans.release()
        a = site.fill(path)
        if a is None:
            return 0
    if a.kind == _LR_REDIRECT:
        if plen != <Py_ssize_t>head.target_len:
            return 0  # the Location keeps the query: the chain writes it
    elif inm >= 0:
        k = _lr_not_modified(buf + fields[inm].value, fields[inm].value_len, a)
        if k < 0:
            return 0
        not_modified = k == 1
    elif ims >= 0:
        if not _lr_is(buf + fields[ims].value, fields[ims].value_len, a.last_modified):
            return 0  # a date to compare: the chain parses it
        not_modified = True
    if not not_modified and a.kind == _LR_FILE and not a.inline and not is_head and (
            <uint64_t>a.size > _LN_FILE_BUDGET):
        return 0  # the chain sends it in steps
    now = clane.lane_now()
    second = <int64_t>now
    if a.second != second:
        a.refresh(second)
    conn.requests += 1
    if cstate == _LN_NEW:
        if _ln_cached_event is None:
            from meshkit.web.connstate import Event
            _ln_cached_event = Event.CACHED
        conn._fire(_ln_cached_event)
    if not_modified:
        wire = a.wire_304
        body = b""
    elif is_head:
        wire = a.wire_head
        body = b""
    elif a.kind == _LR_REDIRECT or a.inline:
        wire = a.wire_get
        body = a.data if a.kind == _LR_FILE else b""
    else:
        wire = None
    if wire is not None:
        rc = csend.send_bytes(lane.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                              &sent, &state)
        if rc < 0 or state != csend.SEND_DONE:
            conn._cached_bytes_sent(_LrPartial(wire, body, -1, 0, None), wire, now,
                                    None if rc < 0 else sent, state)
            return 1
    else:
        head_bytes = a.wire_head
        rc = csend.send_head_and_file(lane.fd, PyBytes_AS_STRING(head_bytes),
                                      <size_t>PyBytes_GET_SIZE(head_bytes), a.fd, 0,
                                      <uint64_t>a.size, &fsent, &state)
        if rc < 0 or state != csend.SEND_DONE:
            conn._cached_file_sent(_LrPartial(head_bytes, b"", a.fd, a.size, a.ans.entry), now,
                                   None if rc < 0 else fsent, state)
            return 1
    conn._deadline = server._now + server._idle_timeout
    conn._dkind = _LN_DL_IDLE
    lane.hits += 1
    lane.rule_hits += 1
    return 1
