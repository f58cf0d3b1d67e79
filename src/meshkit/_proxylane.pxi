# The proxy lane (issue 21): a plain HTTP/1.1 request to a `proxy` site without a body
# (or with a small one, below), from the client's read to the upstream and back, without a
# Python frame per request.
# Called by the client lane (_lane.pxi, Lane.on_readable) with a read that is one whole
# request head; the plans (one per request shape, made once by
# meshkit.web.proxy.clientlane.plan) give the proxy block and the upstream head per
# upstream; each client connection keeps its last head and plan (_PLConn, Lane.pl), so a
# repeated head is compared, not looked up. Per request: the block's pick (in C for a block
# of one upstream, else its Picker), a kept UpstreamConn (_upstream.pxi), one send of the
# head; the answer comes to _PLSink (C calls from the connection's data_received) and goes
# to the client in one send(2) when it came whole with its head, then the access log's
# remembered lines (_pl_log). Everything else goes to clientlane's Python functions (the
# handler path's rules). A POST, PUT or PATCH with one plain Content-Length body of 1 B to
# 64 KiB, whole in the read (or waiting right behind it in the socket), comes through
# _pl_take_body: planned by its head (meshkit.web.bodyhead, plans of its own), sent as the
# rewritten head and the body in one write; the Python paths get the body back as bytes
# (_PLSink.body) and, as the handler path, never send a request with a body twice. What a
# request costs is measured by bench/web_proxy.py as CPU time per request against nginx:
# each attribute read on a Python object here counts.
# Included by _fastpath.pyx after _upstream.pxi: module-level names carry a _pl prefix.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcmp, memcpy
from meshkit.includes cimport lane as clane
from meshkit.includes cimport sendfile as csend

cdef object _pl_front = None   # meshkit.web.proxy.clientlane, imported at first use
cdef object _pl_cached_head = None  # meshkit.web.http1.cached_head
cdef object _pl_Headers = None
cdef object _pl_Cached = None   # connstate.Event.CACHED
cdef object _pl_Picker = None   # meshkit.lb.pick.Picker (its one-upstream pick is inlined)
cdef object _pl_Ticket = None   # meshkit.lb.pick.Ticket
cdef Py_ssize_t _pl_flush_at = 65536  # meshkit.web.logfile.FLUSH_AT (read at import)
cdef double _PL_INF = float("inf")
cdef bint _pl_on = True
cdef dict _pl_plans = {}        # (head bytes, client address, local port) -> _PLPlan, or
                                # the Router for which that head never takes the lane
cdef dict _pl_routers = {}      # Router -> whether any of its sites may take the lane
cdef dict _pl_heads = {}        # (id(fields), status, length, head_only) -> (fields, head)
cdef long long _pl_heads_second = 0
cdef long long _pl_taken = 0    # requests the lane sent (tests check it ran)
cdef long long _pl_bodies = 0   # of those, requests with a body (tests check it ran)
cdef dict _pl_body_plans = {}   # as _pl_plans, for heads whose body follows them in the read
cdef Py_ssize_t _PL_PLANS = 4096
cdef Py_ssize_t _PL_SMALL = 1 << 20  # answers sent from the lane in one send
cdef int _PL_NEW = 0     # ConnState.NEW
cdef int _PL_IDLE = 1    # ConnState.IDLE
cdef int _PL_DL_NONE = 0  # meshkit.web.output.DL_NONE
cdef int _PL_DL_IDLE = 3  # meshkit.web.output.DL_IDLE


def proxy_lane_reset(bint on=True):
    """Forget every plan (a reload, tests) and turn the lane on or off."""
    global _pl_on
    _pl_on = on
    global _pl_last_router
    _pl_plans.clear()
    _pl_body_plans.clear()
    _pl_routers.clear()
    _pl_heads.clear()
    _pl_last_router = None


def proxy_lane_stats():
    """(plans, routers) remembered and requests taken so far: for tests."""
    return len(_pl_plans) + len(_pl_body_plans), len(_pl_routers), _pl_taken


def proxy_lane_bodies():
    """Requests with a body the lane sent so far (_pl_take_body): for tests."""
    return _pl_bodies


def proxy_lane_write_lines(tuple entries):
    """_pl_write_lines for tests (against lanerequest.write_entries, its twin)."""
    if _pl_front is None:
        _pl_import()
    _pl_write_lines(entries)


cdef int _pl_import() except -1:
    global _pl_front, _pl_cached_head, _pl_Headers, _pl_Cached, _pl_on, _pl_Picker, _pl_Ticket
    from meshkit.web.proxy import clientlane
    from meshkit.lb.pick import Picker, Ticket
    _pl_Picker = Picker
    _pl_Ticket = Ticket
    from meshkit.web.http1 import cached_head
    from meshkit.web.message import Headers
    from meshkit.web.connstate import Event
    from meshkit.web import logfile
    global _pl_flush_at
    _pl_flush_at = logfile.FLUSH_AT
    _pl_front = clientlane
    _pl_cached_head = cached_head
    _pl_Headers = Headers
    _pl_Cached = Event.CACHED
    if not clientlane.ENABLED:
        _pl_on = False
    return 0


cdef bint _pl_router_may(object router):
    """Whether any site of this router may take the lane (else the lane never looks)."""
    known = _pl_routers.get(router)
    if known is not None:
        return known
    if len(_pl_routers) >= 64:
        _pl_routers.clear()
    ok = bool(_pl_front.router_may(router))
    _pl_routers[router] = ok
    return ok


cdef class _PLPlan:
    """A clientlane.Plan's fields for C reads (the Plan itself is `py`)."""

    cdef object py, router, remote_addr, proute, handler, client_ip, uri, header_value
    cdef object heads_set
    cdef object rheads  # proute.heads (a Route's Heads, made with it and never replaced)
    cdef bint down_plain  # rheads.down_ops is None: no header_downstream rule
    cdef list heads
    cdef long local_port
    cdef long header_limit, max_fields, max_field_line  # the server's, when it was made
    cdef bint head_only, logged
    cdef Py_ssize_t body_len  # a body plan's Content-Length (0: a head without a body)
    # the last client head made for an answer of this shape (_pl_client_head's memo, no
    # dict or tuple per request): for these raw fields, status, length, heads and second
    cdef object ch_raw, ch_heads
    cdef bytes ch_head
    cdef int ch_status
    cdef Py_ssize_t ch_length
    cdef long long ch_second
    # the upstream set last picked from and what of it and its picker never changes (an
    # UpstreamSet's picker and pools, a Picker's count, table, max_conns and in-flight
    # list are set when they are made): read once per set, not per request
    cdef object us_set, us_picker
    cdef list us_pools, us_active
    cdef ConnTable us_table  # None: the picker is not one _pl_pick_one may inline
    cdef long us_max_conns

    def __init__(self, py):
        self.py = py
        self.router = py.router
        self.remote_addr = py.remote_addr
        self.local_port = py.local_port
        self.proute = py.proute
        self.rheads = py.proute.heads
        self.down_plain = self.rheads.down_ops is None
        self.handler = py.handler
        self.client_ip = py.client_ip
        self.uri = py.uri
        self.header_value = py.header_value
        self.head_only = py.head_only
        self.logged = py.watch is not None
        self.body_len = py.body_length
        self.heads_set = None
        self.heads = None


cdef class _PLConn:
    """What the lane keeps per client connection (Lane.pl): the address and ports, fixed
    for the connection, and the last head judged there with what _pl_plans said of it (a
    client sends the same head over and over: compared, not hashed and looked up)."""

    cdef object remote_addr
    cdef long local_port, remote_port
    cdef bytes data
    cdef object known  # data's _PLPlan, or the router that refused it
    # the access-log lines of the last logged answer on this connection (_pl_log): written
    # again for the same plan, upstream fields, status, size and upstream within the second
    cdef _PLPlan log_plan
    cdef object log_raw
    cdef tuple log_entries
    cdef int log_status
    cdef Py_ssize_t log_sent, log_index
    cdef long long log_second


cdef object _pl_last_router = None  # the router _pl_last_may was asked for
cdef bint _pl_last_may = False


cdef int _pl_take(Lane lane, bytes data) except -1:
    """1 when the lane took the request head `data` read on the lane's connection (answered
    or in flight), 0 to read it normally. Called before the response cache, which never
    holds the answer to a head this takes (only a static site's answers are kept)."""
    global _pl_last_router, _pl_last_may
    if not _pl_on:
        return 0
    if PyBytes_AS_STRING(data)[0] == c'P':  # POST, PUT, PATCH: a body may follow the head
        return _pl_take_body(lane, data)
    if _pl_front is None:
        _pl_import()
        if not _pl_on:
            return 0
    server = lane.server
    router = server._handler
    if router is not _pl_last_router:
        _pl_last_may = _pl_router_may(router)
        _pl_last_router = router
    if not _pl_last_may:
        return 0  # no site of this router may take the lane
    conn = lane.conn
    cdef int cstate = conn._state
    if cstate > _PL_IDLE or conn._queue or conn._out or conn._streaming or server._shutting:
        return 0
    cdef _PLConn memo = _pl_memo(lane, conn)
    cdef bytes last = memo.data
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    if (last is not None and PyBytes_GET_SIZE(last) == size
            and memcmp(PyBytes_AS_STRING(last), PyBytes_AS_STRING(data), <size_t>size) == 0):
        known = memo.known
    else:
        # the upstream head depends on the client's address (X-Forwarded-For) and the
        # local port (transparent's X-Forwarded-Port) besides the request head
        known = _pl_plans.get((data, memo.remote_addr, memo.local_port))
        memo.data = data
        memo.known = known
    if known is router:
        return 0  # this head never takes the lane on this router
    cdef _PLPlan plan = _pl_plan_of(known, router, server)
    if plan is None:
        memo.data = data
        plan = _pl_make(server, conn, router, data, _pl_plans, memo, False)
        memo.known = router if plan is None else plan
        if plan is None:
            return 0
    return _pl_go(lane, conn, server, plan, memo, data, None, 0)


cdef inline _PLConn _pl_memo(Lane lane, object conn):
    cdef _PLConn memo = <_PLConn>lane.pl
    if memo is None:
        memo = _PLConn.__new__(_PLConn)
        memo.remote_addr = conn._remote_addr
        memo.local_port = conn._local_port
        memo.remote_port = conn._remote_port
        lane.pl = memo
    return memo


cdef inline _PLPlan _pl_plan_of(object known, object router, object server):
    """`known` (what a plans dict holds) as a plan still good for router and server, or None."""
    cdef _PLPlan plan
    if type(known) is not _PLPlan or (<_PLPlan>known).router is not router:
        return None
    plan = <_PLPlan>known
    if (plan.header_limit != server._header_limit or plan.max_fields != server._max_fields
            or plan.max_field_line != server._max_field_line):
        return None  # the head limits changed (a reload): judge the head again
    return plan


cdef _PLPlan _pl_make(object server, object conn, object router, bytes head, dict plans,
                      _PLConn memo, bint body):
    """The plan of `head` made (clientlane.plan) and remembered in `plans`, or None (the
    refusal remembered as the router it was made for: a reload makes another)."""
    key = (head, memo.remote_addr, memo.local_port)
    made = _pl_front.plan(server, conn, head, body)
    if len(plans) >= _PL_PLANS:
        plans.clear()
    if made is None:
        plans[key] = router
        return None
    cdef _PLPlan plan = _PLPlan(made)
    plan.header_limit = server._header_limit
    plan.max_fields = server._max_fields
    plan.max_field_line = server._max_field_line
    plans[key] = plan
    return plan


# _fl_rest is _fcgilane.pxi's (the same module, included after)


cdef int _pl_take_body(Lane lane, bytes data) except -1:
    """1 when the lane took the read `data`: one whole request head of a POST, PUT or PATCH
    and the small body its one Content-Length announces (bodyhead.body_request), the
    body's rest read here when the client sent it right behind (answered, in flight, or
    handed to the connection as one read), 0 to read it normally (nothing done). Cheap for
    every other read: only a read that begins with a P and holds a head end within the
    lane's head size is looked up. The plans are _pl_body_plans (keyed by the head alone):
    a head read without its body never shadows the same head with it."""
    global _pl_last_router, _pl_last_may
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n < 20 or PyBytes_AS_STRING(data)[0] != c'P' or not _pl_on:
        return 0
    if _pl_front is None:
        _pl_import()
        if not _pl_on:
            return 0
    server = lane.server
    router = server._handler
    if router is not _pl_last_router:
        _pl_last_may = _pl_router_may(router)
        _pl_last_router = router
    if not _pl_last_may:
        return 0  # no `proxy` site here: nothing more for any read of this server
    conn = lane.conn
    if conn._state > _PL_IDLE or conn._queue or conn._out or conn._streaming or server._shutting:
        return 0
    cdef Py_ssize_t at = _ln_body_head_end(data)
    if not at:
        return 0
    head = data[:at]
    cdef _PLConn memo = _pl_memo(lane, conn)
    cdef _PLPlan plan = _pl_plan_of(
        _pl_body_plans.get((head, memo.remote_addr, memo.local_port)), router, server)
    if plan is None:
        plan = _pl_make(server, conn, router, head, _pl_body_plans, memo, True)
        if plan is None:
            return 0
    cdef Py_ssize_t blen = n - at
    if blen > plan.body_len:
        return 0  # more after the body (a pipelined request): the chain reads them
    cdef bytes whole = data
    if blen < plan.body_len:
        # the body's rest, when the client wrote it right behind the head: read it now (at
        # most the body's bytes, so a pipelined request stays in the socket)
        whole = _fl_rest(lane.fd, data, plan.body_len - blen)
        if PyBytes_GET_SIZE(whole) - at != plan.body_len or not _pl_go(
                lane, conn, server, plan, memo, head, whole, at):
            conn._on_data(whole)  # all that was read, as one read: the chain goes on
        return 1
    return _pl_go(lane, conn, server, plan, memo, head, whole, at)


cdef bytes _pl_with_body(bytes head, bytes whole, Py_ssize_t at):
    """The upstream request in one buffer: the rewritten head (its Content-Length kept)
    and the body, whole[at:]."""
    cdef Py_ssize_t hlen = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t blen = PyBytes_GET_SIZE(whole) - at
    cdef bytes wire = PyBytes_FromStringAndSize(NULL, hlen + blen)
    cdef char *w = PyBytes_AS_STRING(wire)
    memcpy(w, PyBytes_AS_STRING(head), <size_t>hlen)
    memcpy(w + hlen, PyBytes_AS_STRING(whole) + at, <size_t>blen)
    return wire


cdef int _pl_go(Lane lane, object conn, object server, _PLPlan plan, _PLConn memo,
                bytes data, bytes whole, Py_ssize_t body_at) except -1:
    """Send the request of `plan` (its body whole[body_at:] when `whole` is not None):
    1 when taken, 0 when not (nothing done)."""
    cdef int fd = lane.fd
    cdef int cstate = conn._state
    proute = plan.proute
    uset = proute.set
    if uset is not plan.us_set:
        _pl_use_set(plan, uset)
    picker = plan.us_picker
    if picker is None:
        return 0
    cdef double start = clane.lane_now()
    cdef Py_ssize_t index = 0
    ticket = None
    cdef int picked = _pl_pick_one(plan, picker)
    if picked == 0:
        return 0  # nothing to pick now: serve() waits out try_duration (picks again)
    if picked < 0:
        handler = plan.handler
        loop = handler._loop
        if loop is None:
            loop = handler._loop = server._loop
        ticket = picker.pick(loop.time(), plan.client_ip, plan.uri, plan.header_value)
        if ticket is None:
            return 0  # as above
        index = ticket.index
    head = None
    if plan.heads_set is uset:
        head = plan.heads[index]
    if head is None:
        head = plan.py.head(uset, index)
        plan.heads_set = plan.py.heads_set
        plan.heads = plan.py.heads
    if head is None:
        if ticket is None:
            _pl_unpick(picker, index)
        else:
            picker.release(ticket)
        return 0
    global _pl_taken, _pl_bodies
    _pl_taken += 1
    if whole is not None:
        _pl_bodies += 1
    conn.requests += 1
    if cstate == _PL_NEW:  # (nothing since the check above changes the state)
        conn._fire(_pl_Cached)
    conn._streaming = True  # the connection's pipeline waits for this answer
    conn._dkind = _PL_DL_NONE
    # Pool.take_idle inline: the newest kept connection that is still open
    up = None
    idle = plan.us_pools[index].idle
    while idle:
        c = idle.pop()
        if type(c) is not UpstreamConn:
            idle.append(c)  # the twin's connection (MESHKIT_UPSTREAM_LANE=0): serve() uses it
            break
        if not (<UpstreamConn>c).closed:
            up = c
            break
    if up is None:
        if ticket is None:
            ticket = _pl_Ticket(index, "", 0, None)
        if whole is None:
            _pl_front.no_kept(conn, plan.py, uset, ticket, start)
        else:  # serve() dials and sends the body (bytes) as the handler path does
            _pl_front.no_kept(conn, plan.py, uset, ticket, start, whole[body_at:])
        return 1
    cdef _PLSink sink = _PLSink.__new__(_PLSink)
    sink.plan = plan.py
    sink.cplan = plan
    sink.pconn = memo
    sink.proute = proute
    sink.conn = conn
    sink.server = server
    sink.fd = fd
    sink.uset = uset
    sink._ticket = ticket
    sink.index = index
    sink.picker = picker
    sink.start = start
    sink.remote_port = memo.remote_port
    sink.head_only = plan.head_only
    sink.logged = plan.logged
    if whole is not None:
        sink.read = whole
        sink.body_at = body_at
        head = _pl_with_body(head, whole, body_at)
    (<UpstreamConn>up).request(head, plan.head_only, sink)
    return 1


cdef int _pl_use_set(_PLPlan plan, object uset) except -1:
    """Remember the upstream set `uset` and what of it _pl_take reads per request."""
    picker = uset.picker
    plan.us_set = uset
    plan.us_picker = picker
    plan.us_pools = uset.pools
    plan.us_table = None
    plan.us_active = None
    plan.us_max_conns = 0
    if type(picker) is _pl_Picker and picker.count == 1:
        table = picker._table
        if type(table) is ConnTable:
            plan.us_table = <ConnTable>table
            plan.us_active = picker._active
            plan.us_max_conns = picker.max_conns
    return 0


cdef int _pl_pick_one(_PLPlan plan, object picker) except -2:
    """Picker.pick inline for a picker of one upstream (no table, no flow: the up/down
    state and max_conns only): 1 when upstream 0 was taken (its in-flight count raised),
    0 when it is not available now (pick() would answer None), -1 to ask pick() itself
    (several upstreams, passive failures to expire, another picker or table class). The
    picker's fixed parts are the plan's (_pl_use_set)."""
    cdef const c.ct_backend *b
    cdef list active = plan.us_active
    if active is None:
        return -1
    cdef double expiry = picker._next_expiry
    if expiry != _PL_INF:
        return -1  # failures to forget first (tick)
    b = c.ct_get_backend(plan.us_table._t, 0)
    if b == NULL:
        return -1
    if not b.up:
        return 0
    count = active[0]
    if plan.us_max_conns > 0 and count >= plan.us_max_conns:
        return 0
    active[0] = count + 1
    return 1


cdef int _pl_unpick(object picker, Py_ssize_t index) except -1:
    """Picker.release of a ticket without a table (what _pl_pick_one took)."""
    cdef list active = picker._active
    count = active[index]
    if count > 0:
        active[index] = count - 1
    return 0


cdef bytes _pl_client_head(_PLPlan plan, object heads, int status, list raw,
                           Py_ssize_t length):
    """http1.cached_head of the client's fields for the upstream's `raw` ones (Heads.fields_for:
    hop-by-hop dropped), remembered for the second by the (shared, remembered) raw list:
    the plan's last one first, then a table shared by the plans."""
    cdef long long second = clane.lane_now_second()
    if (plan.ch_raw is raw and plan.ch_second == second and plan.ch_status == status
            and plan.ch_length == length and plan.ch_heads is heads):
        return plan.ch_head
    head = _pl_client_head_shared(heads, status, raw, length, second)
    plan.ch_raw = raw
    plan.ch_heads = heads
    plan.ch_head = head
    plan.ch_status = status
    plan.ch_length = length
    plan.ch_second = second
    return head


cdef bytes _pl_client_head_shared(object heads, int status, list raw, Py_ssize_t length,
                                  long long second):
    global _pl_heads_second
    if second != _pl_heads_second:
        _pl_heads.clear()
        _pl_heads_second = second
    key = (id(raw), status, length)
    known = _pl_heads.get(key)
    if known is not None and (<tuple>known)[0] is raw and (<tuple>known)[1] is heads:
        return <bytes>(<tuple>known)[2]
    items, _ = heads.fields_for(raw)
    head = _pl_cached_head(status, _pl_Headers(items), length, True, "1.1")
    if len(_pl_heads) >= 1024:
        _pl_heads.clear()
    _pl_heads[key] = (raw, heads, head)
    return head


cdef int _pl_log(_PLSink sink, int status, bytes body, Py_ssize_t sent) except -1:
    """The access-log lines of a whole answer the lane wrote: the connection's last lines
    when this answer is of the same shape (plan, upstream fields, status, size, upstream)
    within the second clientlane.logged rendered them for, written again from here (no
    Python frame, no key made); else clientlane.logged writes (and renders or recalls)
    them and says which to remember."""
    cdef _PLConn memo = sink.pconn
    raw = sink.items
    if (memo.log_plan is sink.cplan and memo.log_raw is raw and memo.log_status == status
            and memo.log_sent == sent and memo.log_index == sink.index
            and memo.log_second == clane.lane_now_second()):
        _pl_write_lines(memo.log_entries)
        return 0
    got = _pl_front.logged(sink, status, raw, body, sent)
    if got is None:
        memo.log_plan = None
        return 0
    memo.log_second = <long long>(<tuple>got)[0]
    memo.log_entries = <tuple>(<tuple>got)[1]
    memo.log_plan = sink.cplan
    memo.log_raw = raw
    memo.log_status = status
    memo.log_sent = sent
    memo.log_index = sink.index
    return 0


cdef int _pl_write_lines(tuple entries) except -1:
    """lanerequest.write_entries in C: a file sink's line appended to its buffer
    (RotatingFile.append: flushed when full, a flush scheduled when it was empty)."""
    cdef Py_ssize_t n, m
    cdef bytes raw
    for entry in entries:
        pending = (<tuple>entry)[2]
        if pending is None:
            (<tuple>entry)[0].write((<tuple>entry)[1])
            continue
        raw = <bytes>(<tuple>entry)[3]
        n = PyByteArray_GET_SIZE(pending)
        m = PyBytes_GET_SIZE(raw)
        PyByteArray_Resize(pending, n + m)
        memcpy(PyByteArray_AS_STRING(pending) + n, PyBytes_AS_STRING(raw), <size_t>m)
        if n + m >= _pl_flush_at:
            (<tuple>entry)[0].flush()
        elif n == 0:
            (<tuple>entry)[0].schedule()
    return 0


cdef class _PLSink(UpstreamSink):
    """One request of the proxy lane in flight (the UpstreamConn's sink)."""

    cdef public object plan, proute, conn, server, uset, picker, items, feed
    cdef public int fd, status
    cdef public double start
    cdef public long remote_port
    cdef public bint head_only, told, gone, logged
    cdef public Py_ssize_t index  # the upstream picked (the ticket's index)
    cdef _PLPlan cplan
    cdef _PLConn pconn  # the client connection's memo (its last logged lines)
    cdef object _ticket  # None while the pick was _pl_pick_one's (made when asked for)
    cdef bint released   # _pl_pick_one's pick was given back
    cdef list pieces
    cdef Py_ssize_t size
    cdef bytes read  # a request with a body: the read that held it, the body at body_at
    cdef Py_ssize_t body_at

    def body(self):
        """The request's body (b"" without one), for the Python paths (a failure, an
        answer the lane does not write itself): bytes, as the handler path's request has."""
        if self.read is None:
            return b""
        return self.read[self.body_at:]

    @property
    def ticket(self):
        """The request's lb.pick.Ticket (made here for a pick _pl_pick_one did in C)."""
        if self._ticket is None:
            t = _pl_Ticket(self.index, "", 0, None)
            t.done = self.released
            self._ticket = t
        return self._ticket

    cdef int _release(self) except -1:
        """picker.release(ticket), idempotent."""
        if self._ticket is not None:
            self.picker.release(self._ticket)
        elif not self.released:
            self.released = True
            _pl_unpick(self.picker, self.index)
        return 0

    cpdef on_head(self, UpstreamConn conn, int status, list headers):
        self.told = True
        self.status = status
        self.items = headers  # the upstream's fields, shared and remembered by the conn
        self.pieces = []
        self.size = 0

    cpdef on_body(self, UpstreamConn conn, bytes data):
        feed = self.feed
        if feed is not None:
            if feed.closed:
                # the client went away: as client._stream's close (not the upstream's fault)
                if not self.gone:
                    self.gone = True
                    self._release()
                    conn.close()
                return
            feed.push(data, conn)
            return
        self.pieces.append(data)
        self.size += PyBytes_GET_SIZE(data)

    cpdef on_pending(self, UpstreamConn conn):
        # the first read with the head ended before the body did: stream it, as the
        # handler path streams a body that did not come whole with its head
        if self.feed is None:
            pieces, self.pieces = self.pieces, []
            self.feed = _pl_front.streamed(self, self.status, self.items, pieces)

    cpdef on_done(self, UpstreamConn conn):
        self._release()
        feed = self.feed
        if feed is not None:
            feed.finish()
            return
        if self.status == 101:
            # an upgrade nobody asked for (the connection is closed): 502, as _Fast answers
            _pl_front.bad_upgrade(self)
            return
        self._answer()

    cpdef on_error(self, UpstreamConn conn, object error, bint stale):
        if self.gone:
            return
        _pl_front.failed(self, error, stale, self.feed is not None, self.feed)

    cdef int _answer(self) except -1:
        cdef list pieces = self.pieces
        cdef bytes body
        cdef bytes head
        cdef bytes wire
        cdef size_t sent = 0
        cdef int state = csend.SEND_DONE
        cdef int rc
        conn = self.conn
        server = self.server
        if pieces is None:  # no head: cannot happen (on_done follows on_head)
            pieces = []
        body = b"".join(pieces) if len(pieces) != 1 else <bytes>pieces[0]
        cdef _PLPlan plan = self.cplan
        if (not plan.down_plain or self.size > _PL_SMALL or conn._state != _PL_IDLE
                or server._shutting or conn._out):
            _pl_front.answered(self, self.status, self.items, body)
            return 0
        status = self.status
        head = _pl_client_head(plan, plan.rheads, status, self.items, PyBytes_GET_SIZE(body))
        if self.head_only or status < 200 or status == 204 or status == 304 or not body:
            wire = head
        else:
            wire = head + body
        rc = csend.send_bytes(self.fd, PyBytes_AS_STRING(wire), <size_t>PyBytes_GET_SIZE(wire),
                              &sent, &state)
        if rc < 0:
            conn._streaming = False
            conn._abort()
            return 0
        if state != csend.SEND_DONE:
            _pl_front.partial(self, wire, PyBytes_GET_SIZE(head), sent, status, self.items)
            return 0
        conn._streaming = False
        if self.logged:  # the site's access log: its lines, as the writer would call them
            _pl_log(self, status, body, PyBytes_GET_SIZE(wire) - PyBytes_GET_SIZE(head))
        if conn._queue or conn._deferred:
            conn._flush_queue()
        else:
            conn._deadline = server._now + server._idle_timeout
            conn._dkind = _PL_DL_IDLE
        return 0
