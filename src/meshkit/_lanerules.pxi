# The client lane's rule table (meshkit.web.ruletable compiles it; Lane in _lane.pxi calls
# _lr_answer for each read that is one request head, before the response cache: a compiled
# site's answers are all here, and a port without one returns at once). Included by
# _fastpath.pyx after _lane.pxi, so module-level names here carry an _lr prefix.
#
# Per request, without a Python call: hh_scan (csrc/http_head.c, every rule of the head
# lane), the method (GET, HEAD), HTTP/1.1 and keep-alive, the target (lane_plain_path), the
# site by Host and path prefix (memoised per Host value), the prefixes left to the chain
# (browse, markdown), the fields the site's answer depends on (lane_field_kind) into the
# key, the answer (a respcache.CachedResponse) and one stat(2) per validator, then one
# send(2) or head + sendfile(2), and the access log's replayed lines. A key's first request
# runs the site's chain once (ruletable.fill); anything else returns 0 and the connection
# reads the head as before.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from meshkit.includes cimport http_head as chh
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

cdef object _lr_mod = None  # meshkit.web.ruletable, imported on first use
cdef int _LR_FIELDS = 64  # fields a head may have here (more: the chain reads it)
cdef Py_ssize_t _LR_MAX_HOSTS = 1024
cdef Py_ssize_t _LR_MAX_MISSES = 4096


cdef class _LrSite:
    cdef object rules  # ruletable.SiteRules
    cdef tuple prefixes  # bytes: paths left to the chain
    cdef object answers  # rules.answers (a respcache.ResponseCache)
    cdef dict entries  # its entries dict (put and drop change it in place)
    cdef dict misses  # key -> the second its answer could not be kept (no fill again then)

    def __cinit__(self, rules):
        self.rules = rules
        self.prefixes = tuple(p.encode("latin-1") for p in rules.python_prefixes)
        self.answers = rules.answers
        self.entries = rules.answers.entries
        self.misses = {}


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


cdef _LrTable _lr_last = None  # the table made last (connections of a port share it)


cdef _LrTable _lr_table_for(object handler, _LrTable old):
    global _lr_mod, _lr_last
    cdef _LrTable last
    if _lr_mod is None:
        from meshkit.web import ruletable
        _lr_mod = ruletable
    if old is not None:
        _lr_mod.retire(old.handler)  # a reload: the old chain's answers go now
    last = _lr_last
    if last is not None and last.handler is handler:
        return last
    last = _LrTable(handler, _lr_mod.rules_for(handler))
    _lr_last = last  # (servers on other threads' loops may swap it: each keeps its own)
    return last


cdef inline bint _lr_starts(const char *p, Py_ssize_t n, bytes prefix):
    cdef Py_ssize_t m = PyBytes_GET_SIZE(prefix)
    return m <= n and memcmp(p, PyBytes_AS_STRING(prefix), m) == 0


cdef object _lr_fill(_LrSite site, bytes key, const char *buf, chh.hh_head *head,
                     chh.hh_field *fields, object conn):
    """The chain's answer for a key seen first (ruletable.fill), or None."""
    cdef size_t i
    items = []
    for i in range(head.nfields):
        items.append((PyUnicode_DecodeLatin1(buf + fields[i].name, fields[i].name_len, NULL),
                      PyUnicode_DecodeLatin1(buf + fields[i].value, fields[i].value_len, NULL)))
    method = "GET" if head.method_len == 3 else "HEAD"
    url = PyBytes_FromStringAndSize(buf + head.target, head.target_len)
    host = PyUnicode_DecodeLatin1(buf + fields[head.host].value, fields[head.host].value_len,
                                  NULL)
    return _lr_mod.fill(site.rules, key, method, url, items, host, conn)


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
    cdef Py_ssize_t plen, i
    cdef int kind, rc
    cdef int state = csend.SEND_DONE
    cdef size_t sent = 0
    cdef uint64_t fsent = 0
    cdef uint64_t left
    cdef int file_fd
    cdef _LrTable tbl
    cdef _LrSite site = None
    cdef double now
    cdef int64_t second
    server = lane.server
    handler = server._handler
    tbl = <_LrTable>lane.rtable if lane.rtable is not None else None
    if tbl is None or tbl.handler is not handler:
        tbl = _lr_table_for(handler, tbl)
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
    if not ((head.method_len == 3 and memcmp(buf + head.method, b"GET", 3) == 0) or
            (head.method_len == 4 and memcmp(buf + head.method, b"HEAD", 4) == 0)):
        return 0
    target = buf + head.target
    plen = clane.lane_plain_path(target, head.target_len)
    if plen < 0:
        return 0
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
    # the key: request line up to the target's end, the Host value, the fields read (one
    # allocation: the spans are measured first, then copied)
    cdef Py_ssize_t line_len = head.target + head.target_len - head.method
    cdef Py_ssize_t host_len = fields[head.host].value_len
    cdef Py_ssize_t klen = line_len + 1 + host_len
    cdef Py_ssize_t span
    cdef int nkey = 0
    cdef unsigned char kinds[64]
    for i in range(<Py_ssize_t>head.nfields):
        kind = clane.lane_field_kind(buf + fields[i].name, fields[i].name_len)
        kinds[i] = <unsigned char>kind
        if kind == clane.LANE_FIELD_NONE:
            continue
        klen += 1 + fields[i].value + fields[i].value_len - fields[i].name
        nkey += 1
    key = PyBytes_FromStringAndSize(NULL, klen)
    cdef char *kp = PyBytes_AS_STRING(key)
    memcpy(kp, buf + head.method, line_len)
    kp += line_len
    kp[0] = 10
    memcpy(kp + 1, buf + fields[head.host].value, host_len)
    kp += 1 + host_len
    if nkey:
        for i in range(<Py_ssize_t>head.nfields):
            if kinds[i] == clane.LANE_FIELD_NONE:
                continue
            span = fields[i].value + fields[i].value_len - fields[i].name
            kp[0] = 10
            memcpy(kp + 1, buf + fields[i].name, span)
            kp += 1 + span
    hit = site.entries.get(key)
    if hit is None or not _ln_valid(hit.validators):
        if hit is not None:
            site.answers.drop(key)
        # a key whose answer could not be kept (a 404, a 401...) is tried again a second
        # later at the soonest: the chain answers it meanwhile, run once per request
        second = clane.lane_now_second()
        missed = site.misses.get(key)
        if missed is not None and <int64_t>missed == second:
            return 0
        hit = _lr_fill(site, key, buf, &head, fields, conn)
        if hit is None:
            if len(site.misses) >= _LR_MAX_MISSES:
                site.misses.clear()
            site.misses[key] = second
            return 0
    # from here on as Lane._from_cache sends a remembered response
    replay = hit.replay
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
        rc = csend.send_bytes(lane.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                              &sent, &state)
        if rc < 0 or state != csend.SEND_DONE:
            conn._cached_bytes_sent(hit, wire, now, None if rc < 0 else sent, state)
            return 1
    else:
        head_bytes = hit.head
        left = hit.file_left
        if left > _LN_FILE_BUDGET:
            conn._cached_file_sent(hit, now, -1, csend.SEND_AGAIN)
            return 1
        rc = csend.send_head_and_file(lane.fd, PyBytes_AS_STRING(head_bytes),
                                      <size_t>PyBytes_GET_SIZE(head_bytes), file_fd,
                                      <int64_t>hit.file_off, left, &fsent, &state)
        if rc < 0 or state != csend.SEND_DONE:
            conn._cached_file_sent(hit, now, None if rc < 0 else fsent, state)
            return 1
    conn._deadline = server._now + server._idle_timeout
    conn._dkind = _LN_DL_IDLE
    lane.hits += 1
    lane.rule_hits += 1
    if replay is not None:  # the access log's lines (CachedResponse.replay_log)
        hit.replay_log(conn._remote_addr, conn._remote_port, conn._local_addr,
                       conn._local_port, now)
    return 1
