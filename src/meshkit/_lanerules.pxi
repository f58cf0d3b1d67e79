# The client lane's rule table (meshkit.web.ruletable compiles it; Lane in _lane.pxi calls
# _lr_answer for each read that is one request head, before the response cache: a compiled
# site's answers are all here, and a port without one returns at once). Included by
# _fastpath.pyx after _lane.pxi, so module-level names here carry an _lr prefix.
#
# Per request, without a Python call: hh_scan (csrc/http_head.c, every rule of the head
# lane), the method (GET, HEAD), HTTP/1.1 and keep-alive, the target (lane_plain_path), the
# site by Host and path prefix (memoised per Host value), the prefixes left to the chain
# (browse, markdown), the fields the site's answer depends on (lane_field_kind) into the
# key (a stack buffer; compared with the site's memo of its last answer before any bytes
# object, hash or dict lookup), the answer (a respcache.CachedResponse) known current from
# its file watches (web/filewatch.py: a read of csrc/watch_ring.c's completion ring for
# queued events, or one epoll_wait(2) with no timeout; one stat(2) per validator where it has
# none), then one send(2) or head + sendfile(2), and
# the access log's replayed lines. The server's fields are read from its instance dict
# (_lr_get), the connection's through its __slots__. A key's first request runs the site's
# chain once (ruletable.fill); anything else returns 0 and the connection reads the head as before.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from meshkit.includes cimport http_head as chh
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

cdef extern from "Python.h":
    object PyObject_GenericGetDict(object o, void *context)

cdef extern from *:
    """
    /* a dict's version tag (PEP 509): changed by every change to the dict; deprecated
     * from 3.12 on, so there the server's fields are read every time */
    #if PY_VERSION_HEX < 0x030C0000
    #define LR_DICT_VERSIONED 1
    #define LR_DICT_VERSION(d) ((unsigned long long)((PyDictObject *)(d))->ma_version_tag)
    #else
    #define LR_DICT_VERSIONED 0
    #define LR_DICT_VERSION(d) 0ULL
    #endif
    """
    const int LR_DICT_VERSIONED
    unsigned long long LR_DICT_VERSION(dict d)

cdef extern from *:
    """
    #include <structmember.h>
    /* The offset of a plain object slot (__slots__: a member descriptor of T_OBJECT_EX,
     * writable) in its instances, or -1 for any other attribute. */
    static Py_ssize_t lr_slot_offset(PyObject *descr)
    {
        if (Py_TYPE(descr) != &PyMemberDescr_Type)
            return -1;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY))
            return -1;
        return m->offset;
    }
    /* what the member descriptor's get and set do for such a slot (getattr when not fast or
     * unset: its AttributeError); always inlined, one load on the lane's path */
    static inline __attribute__((always_inline)) PyObject *
    lr_slot_fetch(PyObject *o, int fast, Py_ssize_t off, PyObject *name)
    {
        if (fast) {
            PyObject *v = *(PyObject **)((char *)o + off);
            if (v != NULL) {
                Py_INCREF(v);
                return v;
            }
        }
        return PyObject_GetAttr(o, name);
    }
    static inline __attribute__((always_inline)) int
    lr_slot_store(PyObject *o, int fast, Py_ssize_t off, PyObject *name, PyObject *v)
    {
        if (!fast)
            return PyObject_SetAttr(o, name, v);
        PyObject **p = (PyObject **)((char *)o + off);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
        return 0;
    }
    """
    Py_ssize_t lr_slot_offset(object descr)
    object lr_slot_fetch(object o, bint fast, Py_ssize_t off, object name)
    int lr_slot_store(object o, bint fast, Py_ssize_t off, object name, object v) except -1

cdef object _lr_mod = None  # meshkit.web.ruletable, imported on first use
cdef int _LR_FIELDS = 64  # fields a head may have here (more: the chain reads it)
cdef Py_ssize_t _LR_MAX_HOSTS = 1024
cdef Py_ssize_t _LR_MAX_MISSES = 4096
cdef Py_ssize_t _LR_KEY_MAX = 8192  # a key longer than this (never: heads are <= 4096) reads
# the file watches (meshkit.web.filewatch): the shared FileWatch, its private epoll and
# inotify fds (-1: none, every answer stats its validators), and the drains that cleared a
# ticket so far (a memo checked at another count reads its ticket again)
cdef object _lr_watch = None
cdef bint _lr_watch_made = False
cdef int _lr_watch_ep = -1
cdef int _lr_watch_in = -1
cdef Py_ssize_t _lr_drains = 0
cdef int _lr_draining = 0  # drains in progress (servers on several threads' loops)


cdef class _LrSite:
    cdef object rules  # ruletable.SiteRules
    cdef tuple prefixes  # bytes: paths left to the chain
    cdef object answers  # rules.answers (a respcache.ResponseCache)
    cdef dict entries  # its entries dict (put and drop change it in place)
    cdef dict tickets  # rules.tickets: key -> (entry, filewatch.Ticket or None)
    cdef dict misses  # key -> the second its answer could not be kept (no fill again then)
    cdef Py_ssize_t gen  # bumped by each fill and drop here: the memo below checks it
    # The last answer given (a client, or many, repeating one head): its key, the entry,
    # its ticket, and the gen and watch drains it was checked at. A hit on it costs no key
    # object, hash or dict lookup.
    cdef bytes m_key
    cdef object m_hit
    cdef object m_ticket
    cdef Py_ssize_t m_gen
    cdef Py_ssize_t m_drains
    cdef object m_replay  # and its fields the send reads (hit.fd changes only in a fill)
    cdef int m_fd
    cdef int64_t m_second  # the second m_wire and m_head carry the Date of (-1: none yet)
    cdef bytes m_wire
    cdef bytes m_head

    def __cinit__(self, rules):
        self.rules = rules
        self.prefixes = tuple(p.encode("latin-1") for p in rules.python_prefixes)
        self.answers = rules.answers
        self.entries = rules.answers.entries
        self.tickets = rules.tickets
        self.misses = {}
        self.gen = 0
        self.m_key = None
        self.m_gen = -1


cdef class _LrTable:
    cdef object handler
    cdef dict by_route  # id(route) -> _LrSite
    cdef dict by_host  # Host value bytes -> [(route path bytes, _LrSite or None)]
    cdef bytes m_host  # the last Host value looked up, and its routes
    cdef list m_routes
    cdef object server  # the server whose __dict__ sdict is (read without getattr)
    cdef dict sdict
    # the server's fields the lane reads, as of sdict's version (_lr_server_state)
    cdef bint s_valid
    cdef unsigned long long s_version
    cdef object s_handler
    cdef bint s_shutting
    cdef size_t s_header_limit
    cdef size_t s_max_fields
    cdef size_t s_max_field_line
    cdef double s_now
    cdef double s_idle

    def __cinit__(self, handler, compiled):
        self.handler = handler
        self.by_route = {}
        self.by_host = {}
        self.m_host = None
        self.server = None
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

    cdef list routes_at(self, const char *p, Py_ssize_t n):
        """routes() of the Host value p[0:n], without a bytes object when it is the last."""
        cdef bytes last = self.m_host
        if (last is not None and PyBytes_GET_SIZE(last) == n and
                memcmp(PyBytes_AS_STRING(last), p, n) == 0):
            return self.m_routes
        host = PyBytes_FromStringAndSize(p, n)
        found = self.routes(host)
        self.m_host = host
        self.m_routes = found
        return found


cdef inline object _lr_get(dict d, object obj, str name):
    """obj.name read from its instance dict d (what getattr finds for a plain instance
    attribute, without the type lookup that costs more than the read); getattr when the
    dict does not hold it."""
    cdef PyObject *v = PyDict_GetItemWithError(d, name)  # (no error state saved and restored)
    if v is NULL:
        return getattr(obj, name)
    return <object>v


cdef int _lr_server_state(_LrTable tbl, object server) except -1:
    """The server's fields the lane reads (its handler, whether it is shutting down, the
    head limits, its clock and idle timeout) into tbl: read again only when its instance
    dict changed (the dict's version tag, PEP 509, on the Pythons that keep it; on others
    every time)."""
    cdef dict sd
    if tbl.server is not server:
        tbl.server = server
        tbl.sdict = PyObject_GenericGetDict(server, NULL)
        tbl.s_valid = False
    sd = tbl.sdict
    if LR_DICT_VERSIONED and tbl.s_valid and LR_DICT_VERSION(sd) == tbl.s_version:
        return 0
    tbl.s_handler = _lr_get(sd, server, "_handler")
    tbl.s_shutting = bool(_lr_get(sd, server, "_shutting"))
    tbl.s_header_limit = <size_t>_lr_get(sd, server, "_header_limit")
    tbl.s_max_fields = <size_t>min(<Py_ssize_t>_lr_get(sd, server, "_max_fields"),
                                   _LR_FIELDS - 1)
    tbl.s_max_field_line = <size_t>_lr_get(sd, server, "_max_field_line")
    tbl.s_now = <double>_lr_get(sd, server, "_now")
    tbl.s_idle = <double>_lr_get(sd, server, "_idle_timeout")
    tbl.s_version = LR_DICT_VERSION(sd)
    tbl.s_valid = True
    return 0


# The connection's slots the lane reads and writes per answer, read at their offsets (what
# their member descriptors do, without the attribute lookup that costs more than the read):
# for one connection type, known to have plain object slots by these names and no
# __getattribute__ or __setattr__ of its own. Other types go through getattr and setattr.
_LR_SLOTS = ("_state", "_queue", "_out", "_streaming", "requests", "_deadline", "_dkind")
cdef object _lr_ctype = None
cdef bint _lr_ctype_tried = False
cdef Py_ssize_t _lr_o_state, _lr_o_queue, _lr_o_out, _lr_o_streaming
cdef Py_ssize_t _lr_o_requests, _lr_o_deadline, _lr_o_dkind


cdef bint _lr_fast_slots(object conn) except -1:
    """Whether conn's slots may be read at their offsets (learnt from its type's first
    connection)."""
    global _lr_ctype, _lr_ctype_tried, _lr_o_state, _lr_o_queue, _lr_o_out
    global _lr_o_streaming, _lr_o_requests, _lr_o_deadline, _lr_o_dkind
    cdef Py_ssize_t off
    t = type(conn)
    if t is _lr_ctype:
        return True
    if _lr_ctype_tried:
        return False
    _lr_ctype_tried = True
    if (t.__getattribute__ is not object.__getattribute__ or
            t.__setattr__ is not object.__setattr__):
        return False
    offs = []
    for name in _LR_SLOTS:
        descr = None
        for k in t.__mro__:
            descr = k.__dict__.get(name)
            if descr is not None:
                break
        if descr is None:
            return False
        off = lr_slot_offset(descr)
        if off < 0:
            return False
        offs.append(off)
    (_lr_o_state, _lr_o_queue, _lr_o_out, _lr_o_streaming, _lr_o_requests, _lr_o_deadline,
     _lr_o_dkind) = offs
    _lr_ctype = t
    return True


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


cdef object _lr_watch_get():
    """The shared filewatch.FileWatch (None: watches off or not possible)."""
    global _lr_watch, _lr_watch_made, _lr_watch_ep, _lr_watch_in
    if not _lr_watch_made:
        _lr_watch_made = True
        from meshkit.web import filewatch
        watch = filewatch.shared()
        if watch is not None:
            _lr_watch = watch
            _lr_watch_ep = watch.pending_fd
            _lr_watch_in = watch.fd
            if filewatch.RING:
                # this thread's checks become a memory read (csrc/watch_ring.c); when the
                # ring cannot be had, the epoll_wait per request stays
                clane.lane_watch_ring_open(watch.fd)
    return _lr_watch


def watch_ring(bint on):
    """Arm the file watches' ring for the calling thread (on; closing one armed before) or
    close it (off): True when this thread's checks now read the ring. The lane arms it on
    the thread of its first answer; tests arm it on their server's loop thread."""
    watch = _lr_watch_get()
    if not on or watch is None:
        clane.lane_watch_ring_close()
        return False
    return clane.lane_watch_ring_open(_lr_watch_in) == 0 and clane.lane_watch_ring_owned() == 1


def watch_ring_owned():
    """Whether the calling thread's checks read the watches' ring (not after a fork)."""
    return clane.lane_watch_ring_owned() == 1


cdef int _lr_events() except -1:
    """Clear the tickets whatever the watches queued touches, before an answer is trusted:
    a change made before this request arrived was queued by the call that made it."""
    global _lr_drains, _lr_draining
    cdef int flags
    if _lr_watch_ep < 0:
        return 0
    flags = clane.lane_watch_pending(_lr_watch_ep, _lr_watch_in)
    if flags or _lr_draining:
        # (_lr_draining: a server on another thread's loop took these events and is
        # clearing their tickets; drain() waits for it to finish)
        _lr_draining += 1
        try:
            before = _lr_watch.generation
            _lr_watch.drain(flags)
            if _lr_watch.generation != before:
                _lr_drains += 1
        finally:
            _lr_draining -= 1
    return 0


cdef int _lr_remember(_LrSite site, bytes key, object hit, object ticket) except -1:
    site.m_key = key
    site.m_hit = hit
    site.m_ticket = ticket
    site.m_gen = site.gen
    site.m_drains = _lr_drains
    site.m_replay = hit.replay
    site.m_fd = hit.fd
    site.m_second = hit.second
    site.m_wire = hit.wire
    site.m_head = hit.head
    return 0


cdef int _lr_checked(_LrSite site, bytes key, object hit) except -1:
    """Arm the watches of hit's files (ruletable.arm), then stat them once: 1 when hit is
    current (remembered as the memo), 0 when it changed (dropped: the chain answers)."""
    _lr_watch_get()
    ticket = _lr_mod.arm(site.rules, key, hit)
    if _ln_valid(hit.validators):
        _lr_remember(site, key, hit, ticket)
        return 1
    _lr_mod.forget(site.rules, key)
    site.answers.drop(key)
    site.gen += 1
    return 0


cdef object _lr_current(_LrSite site, const char *kbuf, Py_ssize_t klen):
    """The answer kept under the key kbuf[0:klen) when it is current, else None (a stale
    one is dropped). Current: its ticket (filewatch) not cleared, or for an answer whose
    files cannot be watched, one stat(2) per validator as before."""
    cdef bytes key = site.m_key
    _lr_events()
    if (key is not None and site.m_gen == site.gen and PyBytes_GET_SIZE(key) == klen and
            memcmp(PyBytes_AS_STRING(key), kbuf, klen) == 0):
        hit = site.m_hit
        ticket = site.m_ticket
        if ticket is None:
            if _ln_valid(hit.validators):
                return hit
        elif site.m_drains == _lr_drains or ticket.ok:
            site.m_drains = _lr_drains
            return hit
    else:
        key = PyBytes_FromStringAndSize(kbuf, klen)
        hit = site.entries.get(key)
        if hit is None:
            return None
        got = site.tickets.get(key)
        if got is not None and (<tuple>got)[0] is hit:
            ticket = (<tuple>got)[1]
            if ticket is None:
                if _ln_valid(hit.validators):
                    _lr_remember(site, key, hit, ticket)
                    return hit
            elif ticket.ok:
                _lr_remember(site, key, hit, ticket)
                return hit
    # not armed yet, cleared by an event, or its stat differed: arm again and stat once
    return hit if _lr_checked(site, key, hit) else None


cdef int _lr_answer(Lane lane, const char *buf, Py_ssize_t n) except -1:
    """Answer buf[0:n) (one request head, in the lane's read buffer: no bytes object is
    made unless the chain must fill an answer) from the rule table: 1 when answered (or
    handed to the connection's send-completion methods), 0 to read it normally."""
    global _ln_cached_event
    cdef chh.hh_field fields[64]
    cdef chh.hh_limits lim
    cdef chh.hh_head head
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
    cdef double now, deadline
    cdef int64_t second
    server = lane.server
    tbl = <_LrTable>lane.rtable if lane.rtable is not None else None
    if tbl is None:
        tbl = _lr_table_for(server._handler, None)
        lane.rtable = tbl
    _lr_server_state(tbl, server)
    if tbl.s_handler is not tbl.handler:  # a reload: the new handler's table
        tbl = _lr_table_for(tbl.s_handler, tbl)
        lane.rtable = tbl
        _lr_server_state(tbl, server)
    if not tbl.by_route or tbl.s_shutting:
        return 0
    conn = lane.conn
    # Connection has __slots__: its fields are read at their offsets (_lr_fast_slots)
    cdef bint fast = _lr_fast_slots(conn)
    cdef int cstate = lr_slot_fetch(conn, fast, _lr_o_state, "_state")
    if (cstate > _LN_IDLE or lr_slot_fetch(conn, fast, _lr_o_queue, "_queue") or
            lr_slot_fetch(conn, fast, _lr_o_out, "_out") or
            lr_slot_fetch(conn, fast, _lr_o_streaming, "_streaming")):
        return 0
    lim.header_limit = tbl.s_header_limit
    lim.max_fields = tbl.s_max_fields
    lim.max_field_line = tbl.s_max_field_line
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
    for prefix, s in tbl.routes_at(buf + fields[head.host].value, fields[head.host].value_len):
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
    if klen > _LR_KEY_MAX:
        return 0
    cdef char kbuf[8192]
    cdef char *kp = kbuf
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
    hit = _lr_current(site, kbuf, klen)
    if hit is None:
        # a key whose answer could not be kept (a 404, a 401...) is tried again a second
        # later at the soonest: the chain answers it meanwhile, run once per request
        key = PyBytes_FromStringAndSize(kbuf, klen)
        second = clane.lane_now_second()
        missed = site.misses.get(key)
        if missed is not None and <int64_t>missed == second:
            return 0
        site.gen += 1  # the fill may let other answers go (the cache's bounds)
        hit = _lr_fill(site, key, buf, &head, fields, conn)
        if hit is None:
            if len(site.misses) >= _LR_MAX_MISSES:
                site.misses.clear()
            site.misses[key] = second
            return 0
        if _lr_checked(site, key, hit) == 0:
            return 0  # changed already: the chain answers, and the next request fills
    # from here on as Lane._from_cache sends a remembered response (the hit's fields as
    # the site's memo holds them: _lr_current and _lr_checked leave it on hit)
    replay = site.m_replay
    now = clane.lane_now()
    second = <int64_t>now
    if site.m_second != second:
        site.m_wire = hit.refresh(second)
        site.m_head = hit.head
        site.m_second = second
    wire = site.m_wire
    lr_slot_store(conn, fast, _lr_o_requests, "requests",
                  lr_slot_fetch(conn, fast, _lr_o_requests, "requests") + 1)
    if cstate == _LN_NEW:
        if _ln_cached_event is None:
            from meshkit.web.connstate import Event
            _ln_cached_event = Event.CACHED
        conn._fire(_ln_cached_event)
    file_fd = site.m_fd
    if file_fd < 0:
        rc = csend.send_bytes(lane.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                              &sent, &state)
        if rc < 0 or state != csend.SEND_DONE:
            conn._cached_bytes_sent(hit, wire, now, None if rc < 0 else sent, state)
            return 1
    else:
        head_bytes = site.m_head
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
    # the idle deadline (unchanged while the server's clock is: no float made or stored)
    deadline = tbl.s_now + tbl.s_idle
    old = lr_slot_fetch(conn, fast, _lr_o_deadline, "_deadline")
    if type(old) is not float or <double>old != deadline:
        lr_slot_store(conn, fast, _lr_o_deadline, "_deadline", deadline)
    if lr_slot_fetch(conn, fast, _lr_o_dkind, "_dkind") != _LN_DL_IDLE:
        lr_slot_store(conn, fast, _lr_o_dkind, "_dkind", _LN_DL_IDLE)
    lane.hits += 1
    lane.rule_hits += 1
    if replay is not None:  # the access log's lines (CachedResponse.replay_log)
        hit.replay_log(conn._remote_addr, conn._remote_port, conn._local_addr,
                       conn._local_port, now)
    return 1
