# The FastCGI lane (issue 21): a plain HTTP/1.1 GET or HEAD without a body to a `fastcgi`
# site, from the client's read to php-fpm and back, without the HTTP handler chain.
# Called by the client lane (_lane.pxi, Lane.on_readable) with a read that is one whole
# request head; the plans (one per request shape, made once by
# meshkit.web.fastcgi.clientlane.plan) hold the rule, its upstream, the script to stat and
# the encoded PARAMS bar the client's REMOTE_* (the whole request, one buffer per client
# port). Per request: one stat(2) of the script (the safe split, as the handler asks it), a
# kept connection of the rule's pool (the handler's own: meshkit.web.fastcgi.connection),
# one write. The reply, when it comes whole in one read, is decoded by the C record layer
# (fcgi_quick_reply, called from the connection's data_received) and handed to _FLSink.whole,
# which writes status line, fields and body to the client in one send(2). Everything else
# goes to clientlane's Python functions (the handler path's rules and Response).
# A POST/PUT/PATCH whose head and whole small body (one Content-Length, up to 64 KiB) are the
# one read comes through _fl_take_body (the client lane's other hook): its plan is made by
# the head (meshkit.web.bodyhead), and the body goes out as STDIN records after the
# plan's BEGIN_REQUEST + PARAMS, in the same one write (fcgi_put_stdin).
# Included by _fastpath.pyx after _fcgi.pxi and _lane.pxi: module-level names carry _fl.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

cdef class _FLWait
cdef class _FLSink
cdef class _FLFront

cdef object _fl_front = None     # meshkit.web.fastcgi.clientlane, imported at first use
cdef object _fl_cached_head = None  # meshkit.web.http1.cached_head
cdef object _fl_Headers = None
cdef object _fl_Cached = None    # connstate.Event.CACHED
cdef bint _fl_on = True
cdef dict _fl_plans = {}         # (head bytes, client address, local port) -> _FLPlan, or
                                 # the Router for which that head never takes the lane
cdef dict _fl_body_plans = {}    # the same for heads whose body follows them in the read
cdef dict _fl_routers = {}       # Router -> whether any of its sites may take the lane
cdef dict _fl_heads = {}         # (status, length, *fields) -> the client's response head
cdef dict _fl_raw_heads = {}     # (php-fpm's CGI head bytes, body length) -> (status, the
                                 # client's response head or None); same second as _fl_heads
cdef long long _fl_heads_second = 0
cdef long long _fl_taken = 0     # requests the lane sent (tests check it ran)
cdef long long _fl_written = 0   # of those, answers the lane wrote itself
cdef long long _fl_busy = 0      # heads left to the connection: a request in flight or queued
cdef long long _fl_no_file = 0   # heads left to the handler: the script is not a file now
cdef long long _fl_no_kept = 0   # heads left to the handler: no kept connection idle
cdef long long _fl_waited = 0    # requests that waited in the pool's queue (it was full)
cdef long long _fl_bodies = 0    # of the requests taken, those with a body
cdef Py_ssize_t _FL_PLANS = 4096
cdef Py_ssize_t _FL_MAX_IDLE = 256  # meshkit.web.fastcgi.pool.MAX_IDLE (read at import)
cdef long long _FL_PROBE_EVERY = 1024  # pool.PROBE_EVERY (read at import)
cdef Py_ssize_t _FL_SMALL = 65536  # meshkit.web.output._SMALL_BODY: one send with the head
cdef unsigned _FL_REQUEST_ID = 1  # meshkit.web.fastcgi.connection.REQUEST_ID (read at import)
cdef int _FL_NEW = 0     # ConnState.NEW
cdef int _FL_IDLE = 1    # ConnState.IDLE
cdef int _FL_DL_NONE = 0  # meshkit.web.output.DL_NONE
cdef int _FL_DL_IDLE = 3  # meshkit.web.output.DL_IDLE


def fcgi_lane_reset(bint on=True):
    """Forget every plan (a reload, tests) and turn the lane on or off."""
    global _fl_on
    _fl_on = on
    _fl_plans.clear()
    _fl_body_plans.clear()
    _fl_routers.clear()
    _fl_heads.clear()
    _fl_raw_heads.clear()


def fcgi_lane_stats():
    """(plans, routers, requests taken, answers written by the lane, and heads of planned
    shapes left to the Python path: busy connection, script not a file, no kept
    connection; requests that waited for a kept connection, requests with a body taken):
    for tests and the bench's diagnosis."""
    return (len(_fl_plans) + len(_fl_body_plans), len(_fl_routers), _fl_taken, _fl_written,
            _fl_busy, _fl_no_file, _fl_no_kept, _fl_waited, _fl_bodies)


cdef int _fl_import() except -1:
    global _fl_front, _fl_cached_head, _fl_Headers, _fl_Cached, _fl_on
    global _FL_MAX_IDLE, _FL_PROBE_EVERY, _FL_REQUEST_ID
    from meshkit.web.fastcgi import clientlane, connection, pool
    _FL_REQUEST_ID = connection.REQUEST_ID
    _FL_MAX_IDLE = pool.MAX_IDLE
    _FL_PROBE_EVERY = pool.PROBE_EVERY
    from meshkit.web.http1 import cached_head
    from meshkit.web.message import Headers
    from meshkit.web.connstate import Event
    _fl_front = clientlane
    _fl_cached_head = cached_head
    _fl_Headers = Headers
    _fl_Cached = Event.CACHED
    if not clientlane.ENABLED:
        _fl_on = False
    return 0


cdef bint _fl_router_may(object router):
    known = _fl_routers.get(router)
    if known is not None:
        return known
    if len(_fl_routers) >= 64:
        _fl_routers.clear()
    ok = bool(_fl_front.router_may(router))
    _fl_routers[router] = ok
    return ok


cdef class _FLPlan:
    """A clientlane.Plan's fields for C reads (the Plan itself is `py`)."""

    cdef public object py, router, upstream, deadlines
    cdef dict wires
    cdef set watched  # the pool's Deadlines.watched (never replaced, only cleared)
    cdef bytes script  # the file name to stat, UTF-8 (None: the twin's os.stat decides)
    cdef double timeout
    cdef long header_limit, max_fields, max_field_line  # the server's, when it was made
    cdef Py_ssize_t body_len  # the Content-Length of a body plan (0: no body)
    cdef bint head_only, logged

    def __init__(self, py):
        self.py = py
        self.router = py.router
        self.upstream = py.upstream
        self.deadlines = py.upstream.deadlines
        self.watched = self.deadlines.watched
        self.wires = py.wires
        self.timeout = py.timeout
        self.head_only = py.head_only
        self.body_len = py.body_length
        self.logged = py.watch is not None
        name = _fl_front.script_file(py)
        try:
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = None
        self.script = None if raw is None or b"\0" in raw else raw


cdef int _fl_take(object conn, object server, int fd, bytes data) except -1:
    """1 when the lane took the request head `data` read on conn (answered or in flight),
    0 to read it normally (nothing done)."""
    if PyBytes_AS_STRING(data)[0] == c'P':  # POST, PUT, PATCH: the body may follow
        return _fl_take_body(conn, server, fd, data)
    return _fl_go(conn, server, fd, data, _fl_plans, None, 0)


cdef int _fl_take_body(object conn, object server, int fd, bytes data) except -1:
    """1 when the lane took the read `data` on conn, one whole request head and the body
    its Content-Length announces (answered or in flight; the body's rest read here when the
    client sent it right behind), 0 to read it normally (nothing done). Cheap for every
    other read: only a read that begins with a P (POST, PUT, PATCH) and holds a head end
    within the lane's head size is looked up."""
    if PyBytes_GET_SIZE(data) < 20 or PyBytes_AS_STRING(data)[0] != c'P' or not _fl_on:
        return 0
    if _fl_front is None:
        _fl_import()
        if not _fl_on:
            return 0
    if not _fl_router_may(server._handler):
        return 0  # no `fastcgi` site here: nothing more for any read of this server
    cdef Py_ssize_t at = _ln_body_head_end(data)
    if not at:
        return 0
    return _fl_go(conn, server, fd, data[:at], _fl_body_plans, data, at)


cdef int _fl_go(object conn, object server, int fd, bytes data, dict plans, bytes whole,
                Py_ssize_t body_at) except -1:
    """_fl_take for the head `data` (its plans in `plans`), with its body at whole[body_at:]
    when `whole` is not None."""
    if not _fl_on:
        return 0
    if _fl_front is None:
        _fl_import()
        if not _fl_on:
            return 0
    global _fl_busy, _fl_no_file, _fl_no_kept, _fl_waited
    if conn._state > _FL_IDLE or conn._queue or conn._out or conn._streaming or server._shutting:
        _fl_busy += 1
        return 0
    router = server._handler
    # the PARAMS depend on the client's address (REMOTE_ADDR) and the local port
    # (SERVER_PORT) besides the request head
    key = (data, conn._remote_addr, conn._local_port)
    known = plans.get(key)
    if known is router:
        return 0  # this head never takes the lane on this router
    cdef _FLPlan plan = None
    if type(known) is _FLPlan and (<_FLPlan>known).router is router:
        plan = <_FLPlan>known
        if (plan.header_limit != server._header_limit or plan.max_fields != server._max_fields
                or plan.max_field_line != server._max_field_line):
            plan = None  # the head limits changed (a reload): judge the head again
    if plan is None:
        if not _fl_router_may(router):
            return 0
        made = _fl_front.plan(server, conn, data, whole is not None)
        if len(plans) >= _FL_PLANS:
            plans.clear()
        if made is None:
            plans[key] = router
            return 0
        plan = _FLPlan(made)
        plan.header_limit = server._header_limit
        plan.max_fields = server._max_fields
        plan.max_field_line = server._max_field_line
        plans[key] = plan
    cdef Py_ssize_t blen = 0 if whole is None else PyBytes_GET_SIZE(whole) - body_at
    if blen > plan.body_len:
        return 0  # more after the body (a pipelined request): the chain reads them
    # the safe split: the script must be a regular file now (asked for every request)
    cdef _fc_stat_t st
    if plan.script is None or _fc_stat(PyBytes_AS_STRING(plan.script), &st) != 0 \
            or not _FC_S_ISREG(st.st_mode):
        _fl_no_file += 1
        return 0
    cdef bint extra = False
    if blen < plan.body_len:
        # the body's rest, when the client wrote it right behind the head: read it now (at
        # most the body's bytes, so a pipelined request stays in the socket)
        whole = _fl_rest(fd, whole, plan.body_len - blen)
        if PyBytes_GET_SIZE(whole) - body_at != plan.body_len:
            conn._on_data(whole)  # all that was read, as one read: the chain goes on
            return 1
        blen = plan.body_len
        extra = True
    # Client.start inline: the newest kept connection that is still open
    up = None
    idle = plan.upstream.idle
    while idle:
        c = idle.pop()
        if not c.closed:
            up = c
            break
    cdef bint wait = False
    if up is None:
        upstream = plan.upstream
        cap = upstream.cap  # Upstream.full(), inline
        if not cap or upstream.open + upstream.dialling < cap:
            _fl_no_kept += 1
            if extra:  # the bytes read here go to the connection as one read
                conn._on_data(whole)
                return 1
            return 0  # nothing kept and room to dial: the handler dials (and keeps it)
        # the pool is at the cap it learnt: wait in its queue for a kept connection, as
        # Client._wait_for_conn waits (without a Future: _FLWait is called back)
        wait = True
    remote_port = conn._remote_port
    wire = plan.wires.get(remote_port)
    if wire is None:
        wire = plan.py.wire(remote_port)
    global _fl_taken, _fl_bodies
    if blen:  # BEGIN_REQUEST + PARAMS, then the body's STDIN records
        wire = _fl_with_body(wire, whole, body_at)
        _fl_bodies += 1
    _fl_taken += 1
    conn.requests += 1
    if conn._state == _FL_NEW:
        conn._fire(_fl_Cached)
    conn._streaming = True  # the connection's pipeline waits for this answer
    conn._dkind = _FL_DL_NONE
    cdef _FLSink sink = _FLSink.__new__(_FLSink)
    sink.plan = plan.py
    sink.conn = conn
    sink.server = server
    sink.fd = fd
    sink.start = clane.lane_now()
    sink.remote_port = remote_port
    sink.head_only = plan.head_only
    sink.logged = plan.logged
    if blen:
        sink.read = whole
        sink.body_at = body_at
    cdef _FLWait waiter
    if wait:
        _fl_waited += 1
        waiter = _FLWait.__new__(_FLWait)
        waiter.plan = plan
        waiter.sink = sink
        waiter.wire = wire
        plan.upstream.waiters.append(waiter)
        _fl_watch(plan.deadlines, waiter, plan.py.client.timeouts.connect)
        return 1
    _fl_send(plan, sink, up, wire)
    return 1


cdef bytes _fl_rest(int fd, bytes whole, Py_ssize_t need):
    """whole and up to `need` more bytes from the client's socket, read without waiting
    (a few reads, to EAGAIN, EOF or an error: the loop's next read sees those again)."""
    cdef bytes rest = PyBytes_FromStringAndSize(NULL, need)
    cdef char *r = PyBytes_AS_STRING(rest)
    cdef Py_ssize_t got = 0
    cdef ssize_t k
    cdef int tries = 0
    while got < need and tries < 4:
        k = clane.lane_recv(fd, r + got, <size_t>(need - got))
        if k <= 0:
            break
        got += k
        tries += 1
    if not got:
        return whole
    return whole + rest[:got]


cdef bytes _fl_with_body(bytes prefix, bytes whole, Py_ssize_t at):
    """The request's one write: `prefix` (BEGIN_REQUEST + PARAMS) and the STDIN stream of
    whole[at:]."""
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(prefix)
    cdef size_t blen = <size_t>(PyBytes_GET_SIZE(whole) - at)
    cdef bytes wire = PyBytes_FromStringAndSize(NULL, plen + <Py_ssize_t>cfc.fcgi_stdin_size(blen))
    cdef unsigned char *w = <unsigned char *>PyBytes_AS_STRING(wire)
    memcpy(w, PyBytes_AS_STRING(prefix), plen)
    cfc.fcgi_put_stdin(w + plen, _FL_REQUEST_ID,
                       <const unsigned char *>PyBytes_AS_STRING(whole) + at, blen)
    return wire


cdef inline int _fl_send(_FLPlan plan, _FLSink sink, object up, bytes wire) except -1:
    """Write the request on the kept connection `up`; the reply's first read comes to the
    sink through the connection's _FLFront (the transport's protocol from the first time
    the lane used the connection)."""
    transport = up.transport
    sink.upconn = up
    sink.watched = plan.watched
    up.on_ready = sink
    _fl_watch(plan.deadlines, up, plan.timeout)
    front = up.front
    if front is None:
        front = _FLFront(up)
        up.front = front
        transport.set_protocol(front)
    (<_FLFront>front).sink = sink
    transport.write(wire)
    return 0


cdef class _FLFront:
    """The transport's protocol of a FastCGI Connection the lane has used: the first read
    after a lane request's write goes to its sink (_FLSink.first_read); every other
    callback, and every read of the handler's own exchanges, to the Connection."""

    cdef object upconn
    cdef _FLSink sink

    def __init__(self, upconn):
        self.upconn = upconn

    def data_received(self, bytes data):
        cdef _FLSink sink = self.sink
        if sink is None:
            self.upconn.data_received(data)
            return
        self.sink = None
        sink.first_read(self.upconn, data)

    def eof_received(self):
        return self.upconn.eof_received()

    def connection_lost(self, exc):
        self.sink = None
        self.upconn.connection_lost(exc)

    def pause_writing(self):
        self.upconn.pause_writing()

    def resume_writing(self):
        self.upconn.resume_writing()


cdef inline int _fl_watch(object dl, object item, double timeout) except -1:
    """Deadlines.watch without its frame while its sweep is running (else the method)."""
    loop = dl._loop
    if dl._handle is None or loop is None:
        dl.watch(item, timeout)
        return 0
    item.deadline = loop.time() + timeout
    item.timeout = timeout
    (<set>dl.watched).add(item)
    return 0


cdef class _FLWait:
    """A lane request waiting for a kept connection in the pool's queue (Upstream.waiters):
    duck-typed as the Future Client._wait_for_conn waits on (done, set_result), and timed by
    the pool's Deadlines with the connect timeout, after which it dials anyway."""

    cdef public _FLPlan plan
    cdef public _FLSink sink
    cdef public bytes wire
    cdef public double deadline, timeout
    cdef bint finished

    def done(self):
        return self.finished

    def cancelled(self):
        return False

    def set_result(self, upconn):
        if self.finished:
            return
        self.finished = True
        self.plan.watched.discard(self)  # Deadlines.unwatch
        if upconn is None:
            _fl_front.fall_back(self.sink)  # room to dial again: the client's own path
            return
        _fl_send(self.plan, self.sink, upconn, self.wire)

    def time_out(self):
        if self.finished:
            return
        self.finished = True
        _fl_front.dial(self.sink)  # as _wait_for_conn: past the connect timeout, dial


cdef int _fl_release(object upconn, bint marked=True) except -1:
    """Connection.release() of a connection whose reply ended cleanly: its common path
    (nothing fresh, kept) inline, handing it to the first waiter as Upstream.hand_over
    does; anything else through release() itself."""
    up = upconn.upstream
    idle = up.idle
    if (up.fresh or upconn.closed or upconn.read_paused or upconn.error is not None
            or len(idle) >= _FL_MAX_IDLE):
        if not marked:  # release() reads `ended`: mark it as data_received would have
            upconn.got_data = True
            upconn.ended = True
        upconn.release()
        return 0
    completed = up.completed + 1
    up.completed = completed
    upconn.served += 1
    # Connection._reset() for the lane's exchange: _FLSink.first_read took the reply whole
    # from the connection's first read (nothing in buf/head/chunks/stderr/end/queued, no
    # waiter) and set on_ready to None; got_data/ended (`marked`: set by the caller) are
    # the only fields that differ from a fresh state, so the reset's new deque and list
    # are not made for every request
    if marked:  # else _FLSink._raw never set them: still False from the last reset
        upconn.got_data = False
        upconn.ended = False
    waiters = up.waiters
    if waiters:
        cap = up.cap
        if cap and not completed % _FL_PROBE_EVERY:
            up.cap = cap + 1  # the responder may have grown (or the cap was learnt low)
        while waiters:
            fut = waiters.popleft()
            if type(fut) is _FLWait:
                if not (<_FLWait>fut).finished:
                    fut.set_result(upconn)
                    return 0
            elif not fut.done():
                fut.set_result(upconn)
                return 0
    idle.append(upconn)
    return 0


cdef object _fl_client_head(int status, list items, Py_ssize_t length):
    """http1.cached_head of a reply's fields (keep-alive, HTTP/1.1), remembered for the
    second by status, length and fields; None when a field holds CR or LF (the Python
    writer answers that)."""
    global _fl_heads_second
    cdef long long second = clane.lane_now_second()
    if second != _fl_heads_second:
        _fl_heads.clear()
        _fl_raw_heads.clear()
        _fl_heads_second = second
    key = (status, length, *items)
    head = _fl_heads.get(key)
    if head is not None:
        return head
    try:
        head = _fl_cached_head(status, _fl_Headers(items), length, True, "1.1")
    except ValueError:
        return None
    if len(_fl_heads) >= 1024:
        _fl_heads.clear()
    _fl_heads[key] = head
    return head


cdef class _FLSink:
    """One request of the FastCGI lane in flight: the FastCGI connection's on_ready (see
    meshkit.web.fastcgi.connection.Ready)."""

    cdef public object plan, conn, server
    cdef object upconn  # the FastCGI Connection
    cdef set watched  # the pool's Deadlines.watched
    cdef public int fd
    cdef public double start
    cdef public long remote_port
    cdef public bint head_only, logged
    cdef object read  # a request with a body: the read that held it, the body at body_at
    cdef Py_ssize_t body_at

    def stdin(self):
        """The request's body (b"" without one), for the Python path's retries."""
        if self.read is None:
            return b""
        return self.read[self.body_at:]

    # The reply's first read (from the connection's _FLFront): a reply that came whole in
    # it (the C record layer's quick reply, complete) is taken here, with what
    # Connection.data_received and _take_quick do for it; anything else goes to the
    # Connection's data_received.
    # _fc_quick's work is done here without its tuple: the client's response head is
    # looked up by php-fpm's CGI head bytes (_fl_raw_heads), so a known reply shape costs no
    # field decoding, and head and body are copied into the one buffer that is sent.
    cdef int first_read(self, object upconn, bytes data) except -1:
        cdef const unsigned char *buf
        cdef size_t n
        cdef uint32_t app = 0
        cdef uint8_t proto = 0
        cdef long total
        cdef cfc.fcgi_head head
        cdef bytes stdout
        cdef const unsigned char *out
        if (upconn.on_ready is self and upconn.head is None and not upconn.buf
                and not upconn.got_data and not upconn.decoder._buf):
            buf = <const unsigned char *>PyBytes_AS_STRING(data)
            n = <size_t>PyBytes_GET_SIZE(data)
            total = cfc.fcgi_scan_whole(buf, n, &app, &proto)
            if total >= 0 and proto == 0:  # FCGI_REQUEST_COMPLETE
                stdout = PyBytes_FromStringAndSize(NULL, total)
                out = <const unsigned char *>PyBytes_AS_STRING(stdout)
                cfc.fcgi_copy_stdout(buf, n, <unsigned char *>out)
                if cfc.fcgi_parse_head(out, <size_t>total, &head) == 0:
                    # what data_received and _take_quick do for a whole reply, except
                    # got_data/ended: _raw marks them only when its answer is not the
                    # lane's own (the kept path would reset them at once)
                    fresh = upconn.upstream.fresh
                    if fresh:
                        fresh.pop(upconn, None)
                    upconn.on_ready = None
                    self.watched.discard(upconn)
                    self._raw(upconn, stdout, &head, app)
                    return 0
        upconn.data_received(data)
        return 0

    cdef int _raw(self, object upconn, bytes stdout, cfc.fcgi_head *head,
                  uint32_t app) except -1:
        """A whole reply (php-fpm's stdout, its CGI head parsed) that ended cleanly."""
        global _fl_written
        cdef const unsigned char *out = <const unsigned char *>PyBytes_AS_STRING(stdout)
        cdef Py_ssize_t total = PyBytes_GET_SIZE(stdout)
        cdef Py_ssize_t bstart = <Py_ssize_t>head.body_start
        cdef Py_ssize_t blen = total - bstart
        cdef Py_ssize_t hlen
        cdef int status
        cdef bytes wire
        cdef char *w
        conn = self.conn
        if (_fl_length_lies(self.head_only, head.content_length, blen)
                or self.logged or blen > _FL_SMALL):
            upconn.got_data = True
            upconn.ended = True
            self.whole(upconn, _fl_quick_tuple(out, total, head, app))
            return 0
        key = (PyBytes_FromStringAndSize(<const char *>out, bstart), blen)
        known = _fl_raw_heads.get(key)
        if known is None:
            status = head.status
            client_head = _fl_client_head(status, _fc_items(out, head), blen)
            # _fl_client_head may have cleared the caches at a new second: store after it
            known = (status, client_head)
            if len(_fl_raw_heads) >= 1024:
                _fl_raw_heads.clear()
            _fl_raw_heads[key] = known
        client_head = (<tuple>known)[1]
        if client_head is None or conn._state != _FL_IDLE or self.server._shutting or conn._out:
            upconn.got_data = True
            upconn.ended = True
            self.whole(upconn, _fl_quick_tuple(out, total, head, app))
            return 0
        _fl_release(upconn, False)
        status = (<tuple>known)[0]
        hlen = PyBytes_GET_SIZE(<bytes>client_head)
        if self.head_only or status < 200 or status == 204 or status == 304 or not blen:
            wire = <bytes>client_head
        else:
            wire = PyBytes_FromStringAndSize(NULL, hlen + blen)
            w = PyBytes_AS_STRING(wire)
            memcpy(w, PyBytes_AS_STRING(<bytes>client_head), hlen)
            memcpy(w + hlen, out + bstart, blen)
        self._send(status, wire, hlen, None, None, out, head)
        return 0

    cdef int _send(self, int status, bytes wire, Py_ssize_t hlen, object items, object body,
                   const unsigned char *out, cfc.fcgi_head *head) except -1:
        """One send(2) of the client's answer (head, or head and body), then the client
        connection's next request."""
        global _fl_written
        cdef size_t sent = 0
        cdef int state = csend.SEND_DONE
        cdef int rc
        conn = self.conn
        rc = csend.send_bytes(self.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                              &sent, &state)
        if rc < 0:
            conn._streaming = False
            conn._abort()
            return 0
        if state != csend.SEND_DONE:
            if items is None:  # the raw path: the fields for the Python writer's rest
                items = _fc_items(out, head)
            _fl_front.partial(self, wire, hlen, sent, status, items)
            return 0
        _fl_written += 1
        conn._streaming = False
        if self.logged:  # the site's access log: its lines, as the writer would call them
            _fl_front.logged(self, status, items, body, PyBytes_GET_SIZE(wire) - hlen)
        if conn._queue or conn._deferred:
            conn._flush_queue()
        else:
            server = self.server
            conn._deadline = server._now + server._idle_timeout
            conn._dkind = _FL_DL_IDLE
        return 0

    def __call__(self, upconn):
        # the head without the whole reply, an end without a head, or an error
        _fl_front.ready(self, upconn)

    def whole(self, upconn, tuple quick):
        """A reply that came whole in one read and ended cleanly (fast.quick_reply)."""
        cdef int status = quick[0]
        cdef list items = quick[1]
        length = quick[2]
        cdef bytes body = quick[3]
        cdef Py_ssize_t blen = PyBytes_GET_SIZE(body)
        _fl_release(upconn)
        conn = self.conn
        server = self.server
        if (_fl_length_lies(self.head_only, -1 if length is None else length, blen)
                or conn._state != _FL_IDLE or server._shutting or conn._out or blen > _FL_SMALL):
            _fl_front.answered(self, status, items, length, body)
            return
        head = _fl_client_head(status, items, blen)
        if head is None:
            _fl_front.answered(self, status, items, length, body)
            return
        if self.head_only or status < 200 or status == 204 or status == 304 or not blen:
            wire = head
        else:
            wire = head + body
        self._send(status, wire, PyBytes_GET_SIZE(head), items, body, NULL, NULL)


cdef inline bint _fl_length_lies(bint head_only, long long declared, Py_ssize_t blen):
    """Whether the Python writer answers the reply (True) rather than the lane: a script
    Content-Length (`declared`, -1 if none) that is not the body's, as _Ready.whole drops it.
    A HEAD answer is the lane's only with the script's own Content-Length and no body or that
    body (clientlane.answered keeps the field then): without one, response_for answers with
    a stream that leaves the length out."""
    if head_only:
        return declared < 0 or (blen != 0 and declared != blen)
    return declared >= 0 and declared != blen


cdef tuple _fl_quick_tuple(const unsigned char *out, Py_ssize_t total, cfc.fcgi_head *head,
                           uint32_t app):
    """_fc_quick's tuple of a parsed whole reply (protocol status 0: complete)."""
    length = None if head.content_length < 0 else head.content_length
    body = PyBytes_FromStringAndSize(<const char *>out + head.body_start,
                                     total - <Py_ssize_t>head.body_start)
    return (head.status, _fc_items(out, head), length, body, app, 0)
