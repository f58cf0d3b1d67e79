# The proxy's upstream connection, Python face (C core in csrc/upstream_resp.c, declarations
# in includes/upstream_resp.pxd). The pure-Python twin is meshkit.web.proxy.client._Conn,
# which this class stands in for attribute by attribute (meshkit.web.proxy.client.CONN picks
# one): the proxy's exchange(), finish(), _stream() and the handler's synchronous path drive
# either the same way. Included by _fastpath.pyx, so module-level names carry an _up prefix.
#
# What is in C: the response head (a plain HTTP/1.1 head: status, fields, framing,
# keep-alive, hop-by-hop marks), Content-Length, chunked and close-delimited bodies, 1xx
# interim answers skipped, the answer to HEAD keeping the connection. Anything the C parser
# declines (HTTP/1.0, 101 and upgrades, odd framing, odd bytes in the head) goes whole to
# httptools with the twin's callbacks, so an unusual head is judged by one parser only.
#
# Two ways to be told about a response:
# - the twin's: start(head, head_only, on_ready) / waiter futures (the Python handlers);
# - a sink (UpstreamSink, cpdef methods: a Cython subclass gets C calls): request(head,
#   head_only, sink) reports on_head, on_body (each piece as it comes), on_done and
#   on_error; no Future, no coroutine. That is the API of the C client lane.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.errno cimport errno
from libc.string cimport memcmp
from meshkit.includes cimport upstream_resp as cup

cdef extern from "<sys/socket.h>" nogil:
    ssize_t _up_send "send" (int fd, const void *buf, size_t n, int flags)
    int _UP_MSG_NOSIGNAL "MSG_NOSIGNAL"
    int _UP_MSG_DONTWAIT "MSG_DONTWAIT"

import asyncio as _up_asyncio

try:
    from uvloop.loop import TCPTransport as _up_TCPTransport
except ImportError:  # no uvloop: the transport writes (the tests' plain asyncio loops)
    _up_TCPTransport = None

cdef object _up_Broken = None
cdef object _up_Timeout = None
cdef object _up_Parser = None
cdef object _up_ParserError = None
cdef object _up_ParserUpgrade = None
cdef object _up_TooLarge = None
cdef dict _up_heads = {}       # raw head -> (status, headers, framing, length, keep, hop)
cdef dict _up_head_heads = {}  # the same for answers to HEAD
cdef Py_ssize_t _UP_REMEMBER_BELOW = 2048
cdef Py_ssize_t _UP_REMEMBERED = 256
cdef Py_ssize_t _UP_READ_HIGH = 1 << 20

UPSTREAM_MAX_HEAD = cup.UP_MAX_HEAD
UPSTREAM_MAX_FIELDS = cup.UP_MAX_FIELDS


def upstream_setup(broken, timeout, parser, parser_error, parser_upgrade, too_large):
    """The classes the connection raises and falls back to (meshkit.web.proxy.client
    passes its own once at import: no import cycle)."""
    global _up_Broken, _up_Timeout, _up_Parser, _up_ParserError, _up_ParserUpgrade
    global _up_TooLarge
    _up_Broken = broken
    _up_Timeout = timeout
    _up_Parser = parser
    _up_ParserError = parser_error
    _up_ParserUpgrade = parser_upgrade
    _up_TooLarge = too_large


cdef inline str _up_text(const unsigned char *buf, uint32_t off, uint32_t n):
    return PyUnicode_DecodeLatin1(<const char *>buf + off, n, NULL)


def upstream_parse_head(bytes raw not None, bint head_only=False):
    """The C parser alone, for tests: (status, [(name, value)], framing, length, keep,
    interim, [hop-by-hop flag per field]) or None when it declines."""
    cdef cup.up_head h
    cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(raw)
    if cup.up_parse_head(buf, <size_t>PyBytes_GET_SIZE(raw), head_only, &h) != cup.UP_OK:
        return None
    fields = []
    hop = []
    for i in range(h.nfields):
        fields.append((_up_text(buf, h.fields[i].name_off, h.fields[i].name_len),
                       _up_text(buf, h.fields[i].value_off, h.fields[i].value_len)))
        hop.append(bool(h.fields[i].flags & cup.UP_F_HOP))
    return (h.status, fields, h.framing, h.content_length, bool(h.keep), bool(h.interim), hop)


cdef tuple _up_parse(bytes raw, bint head_only):
    """(status, headers, framing, length, keep, interim) of a head, remembered by its
    bytes, or None when the C parser declines it."""
    cdef dict memo = _up_head_heads if head_only else _up_heads
    cdef tuple known = memo.get(raw)
    cdef cup.up_head h
    cdef const unsigned char *buf
    cdef list headers
    cdef int i
    if known is not None:
        return known
    buf = <const unsigned char *>PyBytes_AS_STRING(raw)
    if cup.up_parse_head(buf, <size_t>PyBytes_GET_SIZE(raw), head_only, &h) != cup.UP_OK:
        return None
    headers = []
    for i in range(h.nfields):
        headers.append((_up_text(buf, h.fields[i].name_off, h.fields[i].name_len),
                        _up_text(buf, h.fields[i].value_off, h.fields[i].value_len)))
    known = (h.status, headers, h.framing, h.content_length, bool(h.keep), bool(h.interim))
    if PyBytes_GET_SIZE(raw) <= _UP_REMEMBER_BELOW and not h.interim:
        if len(memo) >= _UP_REMEMBERED:
            memo.clear()
        memo[raw] = known
    return known


cdef class UpstreamSink:
    """What request() reports to. Override in Cython (cdef class ...(UpstreamSink)) for C
    calls, or in Python. Order: on_head once, on_body for each piece (none for an empty
    body), then on_done (the connection already back in its pool or closed) or on_error
    at any point (the connection closed). `stale` in on_error: a kept connection that the
    upstream had closed before answering anything (no byte came back, no timeout): an
    idempotent request without a body may be sent again on a fresh connection."""

    cpdef on_head(self, UpstreamConn conn, int status, list headers):
        pass

    cpdef on_body(self, UpstreamConn conn, bytes data):
        pass

    cpdef on_done(self, UpstreamConn conn):
        pass

    cpdef on_error(self, UpstreamConn conn, object error, bint stale):
        pass

    cpdef on_pending(self, UpstreamConn conn):
        """A read ended after on_head and before the body did (the proxy lane streams
        from here, as the handler path streams a body that did not come with its head)."""
        pass


cdef class UpstreamConn:
    """One connection to an upstream and the response being read on it (the twin:
    meshkit.web.proxy.client._Conn, same attributes and methods)."""

    cdef public object pool, transport, parser, waiter, body_waiter, drain_waiter
    cdef public object headers, body, upgrade_rest, error, on_ready
    cdef public int status
    cdef public Py_ssize_t buffered, head_size
    cdef public bint fed, head_done, done, head_only, interim, keep, closed, got_bytes
    cdef public bint read_paused, write_paused, framed
    cdef public double deadline, timeout
    cdef UpstreamSink sink
    cdef bint active          # an exchange was begun and its response is not over
    cdef bint head_told       # the sink has had on_head
    cdef bint in_head         # httptools is reading a head's fields (later ones: trailers)
    cdef int framing
    cdef long long left       # body bytes still due (Content-Length)
    cdef object pending       # bytes of a head not yet whole
    cdef cup.up_chunked chunk
    cdef int fd               # the socket's, for request()'s own send(2) (-1: none)
    cdef bytes memo_raw       # the last response head (without its CRLFCRLF) and what
    cdef tuple memo_known     # _up_parse made of it: the next one is compared, not parsed
    cdef bint memo_head_only
    cdef object deadlines     # pool.deadlines (made with the pool, never replaced)
    cdef set watched          # deadlines.watched (made with it, never replaced)
    cdef double pool_timeout  # pool.timeout (the block's, set when the pool is made)

    def __init__(self, pool):
        self.pool = pool
        self.deadlines = pool.deadlines
        self.watched = self.deadlines.watched
        self.pool_timeout = pool.timeout
        self.transport = None
        self.parser = None
        self.waiter = self.body_waiter = self.drain_waiter = None
        self.status = 0
        self.headers = []
        self.fed = False
        self.body = []
        self.buffered = 0
        self.head_done = self.done = self.head_only = self.interim = False
        self.keep = True
        self.closed = self.got_bytes = False
        self.head_size = 0
        self.read_paused = self.write_paused = False
        self.upgrade_rest = None
        self.error = None
        self.framed = True
        self.deadline = self.timeout = 0.0
        self.on_ready = None
        self.sink = None
        self.active = False
        self.pending = None
        self.fd = -1

    cpdef begin(self, bint head_only):
        self.status = 0
        self.headers = []
        self.body = []
        self.buffered = 0
        self.head_done = self.done = self.interim = False
        self.head_only = head_only
        self.got_bytes = False
        self.head_size = 0
        self.fed = False
        self.error = None
        self.active = True
        self.head_told = False
        self.pending = None

    def start(self, bytes head, bint head_only, on_ready):
        """Send a request without a body on this (kept) connection; `on_ready(self)` once
        the response head is in or the exchange failed (self.error set)."""
        self.begin(head_only)
        self.on_ready = on_ready
        self.pool.deadlines.watch(self, self.pool.timeout)
        self.transport.write(head)

    cpdef request(self, bytes head, bint head_only, UpstreamSink sink):
        """Send a request without a body (its head already made, one buffer) on this kept
        connection (Pool.take_idle()) and report the response to `sink`."""
        if sink is None:
            raise TypeError("request() needs a sink")
        self.begin(head_only)
        self.sink = sink
        deadlines = self.deadlines
        loop = deadlines._loop
        if loop is not None and deadlines._handle is not None:
            # Deadlines.watch inline while its sweep is scheduled (the loop is running)
            self.timeout = self.pool_timeout
            self.deadline = loop.time() + self.timeout
            self.watched.add(self)
        else:
            deadlines.watch(self, self.pool_timeout)
        _up_write_head(self, head)

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.fd = -1
        # a plain TCP transport only (over TLS the socket carries records, not the head)
        sock = transport.get_extra_info("socket") if type(transport) is _up_TCPTransport else None
        if sock is not None:
            try:
                self.fd = sock.fileno()
            except (OSError, ValueError):
                self.fd = -1

    def data_received(self, bytes data):
        self.got_bytes = True
        if self.fed:
            self._feed_parser(data)
            self.wake()
            return
        if not self.active or self.done:
            # bytes nobody asked for (after the response ended): the connection is unusable
            self.keep = False
            self.close()
            return
        if not self.head_done:
            if self.pending is not None:
                data = self.pending + data
                self.pending = None
            _up_head(self, data)
        else:
            _up_body(self, data, 0)
        self.wake()

    cdef _fail_head(self):
        self.error = _up_Broken(f"the upstream's response head is over {cup.UP_MAX_HEAD} bytes")
        self.keep = False
        self.close()

    cdef _take(self, bytes piece):
        if not PyBytes_GET_SIZE(piece):
            return
        if self.head_only:
            return
        if self.sink is not None:
            if not self.head_told:
                self._tell_head()
            self.sink.on_body(self, piece)
            return
        self.body.append(piece)
        self.buffered += PyBytes_GET_SIZE(piece)
        if (self.buffered > _UP_READ_HIGH and not self.read_paused
                and self.transport is not None):
            self.read_paused = True
            self.transport.pause_reading()

    cdef _feed_parser(self, bytes data):
        # the twin's path (client._Conn.data_received after its quick checks)
        if self.parser is None:
            self.parser = _up_Parser(self)
        self.fed = True
        try:
            self.parser.feed_data(data)
        except _up_ParserUpgrade as exc:
            self.upgrade_rest = data[exc.args[0]:]
            self.done = True
        except _up_ParserError as exc:
            if not self.done and self.error is None:
                self.error = _up_Broken(f"bad HTTP from the upstream: {exc}")
            self.keep = False
            self.close()
        else:
            if not self.head_done and self.error is None:
                self.head_size += PyBytes_GET_SIZE(data)
                if self.head_size > cup.UP_MAX_HEAD:
                    self._fail_head()

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.closed = True
        self.keep = False
        self.pool.forget(self)
        if self.head_done and not self.done and not self.framed:
            self.done = True  # a body delimited by the close of the connection
        elif not self.done and self.error is None:
            self.error = _up_Broken("the upstream closed the connection")
        self._wake()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- httptools callbacks (only for the heads the C parser declines)

    def on_message_begin(self):
        self.headers = []
        self.in_head = True

    def on_header(self, bytes name, bytes value):
        if not self.in_head:
            return  # a chunked body's trailer fields: dropped (never sent on as fields)
        headers = self.headers
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if not self.head_done:
            self.head_size += len(name) + len(value) + 4
            if len(headers) > cup.UP_MAX_FIELDS or self.head_size > cup.UP_MAX_HEAD:
                self.error = _up_Broken(
                    f"the upstream's response head is over {cup.UP_MAX_HEAD} bytes"
                    f" or {cup.UP_MAX_FIELDS} fields"
                )
                raise _up_TooLarge

    def on_headers_complete(self):
        self.in_head = False
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True
            self.headers = []
            return
        self.status = status
        self.head_done = True
        self.keep = self.keep and bool(self.parser.should_keep_alive())
        self.framed = status == 101 or any(
            n.lower() in ("content-length", "transfer-encoding") for n, _ in self.headers
        )
        if self.head_only or status == 204 or status == 304:
            self.framed = True
        if self.head_only:
            self.done = True
            self.keep = False

    def on_body(self, bytes data):
        self._take(data)

    def on_message_complete(self):
        if self.interim:
            self.interim = False
            return
        self.done = True

    # -- helpers

    def _wake(self):
        self.wake()

    cdef wake(self):
        cdef UpstreamSink sink = self.sink
        if sink is not None:
            self._tell(sink)
            return
        ready = self.on_ready
        if ready is not None:
            if self.head_done or self.error is not None:
                self.on_ready = None
                self.watched.discard(self)
                ready(self)
            return
        w = self.waiter
        if w is not None and not w.done() and (self.head_done or self.error is not None):
            w.set_result(None)
        w = self.body_waiter
        if w is not None and not w.done():
            w.set_result(None)

    cdef _tell_head(self):
        self.head_told = True
        self.sink.on_head(self, self.status, self.headers)

    cdef _tell(self, UpstreamSink sink):
        if self.error is not None:
            self.sink = None
            self.active = False
            self.watched.discard(self)
            error = self.error
            stale = not self.got_bytes and not isinstance(error, _up_Timeout)
            self.close()
            sink.on_error(self, error, stale)
            return
        if self.head_done and not self.head_told:
            self._tell_head()
        if not self.done:
            # the timeout runs from the last thing read, as the streamed paths' waits do
            if self.head_done:
                self.deadlines.watch(self, self.timeout)
                if self.head_told:
                    sink.on_pending(self)
            return
        if self.done:
            self.sink = None
            self.active = False
            self.watched.discard(self)
            if self.status == 101:
                self.close()  # no upgrade through a sink
            else:
                self._put()
            sink.on_done(self)

    def take_body(self):
        body = self.body
        data = b"".join(body) if len(body) != 1 else body[0]
        self.body = []
        self.buffered = 0
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        if self.done:
            self.active = False
        return data

    def time_out(self):
        """The deadline passed (Deadlines): fail the exchange with UpstreamTimeout."""
        if self.error is None:
            self.error = _up_Timeout(
                f"{self.pool.upstream.name} did not answer within {self.timeout:g}s"
            )
        self.close()
        self.wake()

    async def drained(self):
        if self.write_paused and not self.closed:
            self.drain_waiter = _up_asyncio.get_running_loop().create_future()
            await self.drain_waiter

    cdef _put(self):
        """Pool.put(self) inline (client.Pool: kept idle, or closed)."""
        if self.closed:
            return
        pool = self.pool
        idle = pool.idle
        if not self.keep or len(idle) >= pool.keepalive:
            self.close()
            return
        self.waiter = self.body_waiter = None
        self.on_ready = None
        idle.append(self)

    def close(self):
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.close()


# -- UpstreamConn's reading and writing of an exchange, out of the class body


cdef _up_write_head(UpstreamConn conn, bytes head):
    """transport.write(head), with one send(2) of our own when the transport holds
    nothing unsent (the head, a few hundred bytes, nearly always goes whole): what is
    left, or the whole on EAGAIN or an error, goes to the transport, which reports
    errors as it always does (connection_lost)."""
    cdef ssize_t n = -1
    cdef Py_ssize_t size = PyBytes_GET_SIZE(head)
    transport = conn.transport
    # not while closing: the fd may already be closed (and its number reused)
    if (conn.fd >= 0 and not conn.closed and not transport.is_closing()
            and transport.get_write_buffer_size() == 0):
        n = _up_send(conn.fd, PyBytes_AS_STRING(head), <size_t>size,
                     _UP_MSG_NOSIGNAL | _UP_MSG_DONTWAIT)
        if n == size:
            return
    if n > 0:
        transport.write(head[n:])
    else:
        transport.write(head)


cdef _up_head(UpstreamConn conn, bytes data):
    """A read while the response head is not in yet: its head(s) (interim answers skipped;
    heads the C parser declines go whole to httptools), then the body bytes after it."""
    cdef Py_ssize_t start = 0, end, n = PyBytes_GET_SIZE(data)
    cdef tuple known
    cdef bytes raw
    cdef bytes memo
    cdef Py_ssize_t m
    cdef const char *p
    while True:
        # the same head as the last one on this connection (the usual case: only Date
        # changes, once a second): compared in place, no slice, no hash, no lookup. Its
        # bytes hold no CRLFCRLF, so one right after them is the first in data.
        memo = conn.memo_raw
        if memo is not None and conn.memo_head_only == conn.head_only:
            m = PyBytes_GET_SIZE(memo)
            p = PyBytes_AS_STRING(data) + start
            if (n - start >= m + 4 and memcmp(p, PyBytes_AS_STRING(memo), m) == 0
                    and memcmp(p + m, b"\r\n\r\n", 4) == 0):
                end = start + m
                known = conn.memo_known
                start = _up_got_head(conn, data, known, end, n)
                if start < 0:
                    return
                continue
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            if n - start > cup.UP_MAX_HEAD:
                conn._fail_head()
            else:
                conn.pending = data[start:] if start else data
            return
        raw = data[start:end]
        known = _up_parse(raw, conn.head_only)
        if known is None:
            # an unusual head: httptools takes this response whole, as the twin does
            conn._feed_parser(data[start:] if start else data)
            return
        if not known[5] and PyBytes_GET_SIZE(raw) <= _UP_REMEMBER_BELOW:
            conn.memo_raw = raw
            conn.memo_known = known
            conn.memo_head_only = conn.head_only
        start = _up_got_head(conn, data, known, end, n)
        if start < 0:
            return


cdef Py_ssize_t _up_got_head(UpstreamConn conn, bytes data, tuple known, Py_ssize_t end,
                             Py_ssize_t n) except -2:
    """Take the parsed head `known` that ends (before its CRLFCRLF) at `end`: -1 when
    the head is the response's, else where the next head starts (an interim answer)."""
    status, headers, framing, length, keep, interim = known
    if interim:
        return end + 4
    conn.status = status
    conn.headers = headers
    conn.head_done = True
    conn.framing = framing
    conn.framed = framing != cup.UP_BODY_CLOSE
    conn.keep = conn.keep and keep
    if framing == cup.UP_BODY_NONE:
        conn.done = True
        if end + 4 != n:
            conn.keep = False  # bytes after the head answer nothing we asked
        return -1
    if framing == cup.UP_BODY_LENGTH:
        conn.left = length
        if length == 0:
            conn.done = True
            if end + 4 != n:
                conn.keep = False
            return -1
    elif framing == cup.UP_BODY_CHUNKED:
        conn.chunk.state = 0
        conn.chunk.left = 0
        conn.chunk.digits = 0
        conn.chunk.trailer = 0
    if end + 4 < n:
        _up_body(conn, data, end + 4)
    return -1


cdef _up_body(UpstreamConn conn, bytes data, Py_ssize_t start):
    """Body bytes of data from `start`, by the response's framing."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data) - start
    cdef size_t used = 0, made = 0
    cdef int rc
    cdef bytes out
    cdef bytes piece
    if n <= 0:
        return
    if conn.framing == cup.UP_BODY_LENGTH:
        if n <= conn.left:
            piece = data[start:] if start else data
            conn.left -= n
        else:
            piece = data[start:start + conn.left]
            conn.left = 0
            conn.keep = False  # more than the response: do not reuse the connection
        if conn.left == 0:
            conn.done = True
        conn._take(piece)
    elif conn.framing == cup.UP_BODY_CHUNKED:
        out = PyBytes_FromStringAndSize(NULL, n)
        rc = cup.up_dechunk(&conn.chunk,
                            <const unsigned char *>PyBytes_AS_STRING(data) + start,
                            <size_t>n, <unsigned char *>PyBytes_AS_STRING(out),
                            &used, &made)
        if made:
            conn._take(out[:made] if <Py_ssize_t>made != n else out)
        if rc == cup.UP_CHUNK_ERROR:
            if conn.error is None:
                conn.error = _up_Broken(
                    "bad HTTP from the upstream: Invalid character in chunked encoding")
            conn.keep = False
            conn.close()
        elif rc == cup.UP_CHUNK_DONE:
            conn.done = True
            if <Py_ssize_t>used != n:
                conn.keep = False
    else:  # until the close
        conn._take(data[start:] if start else data)


cdef class ProxyExchange(UpstreamSink):
    """One request of meshkit.web.proxy.lane in flight: the UpstreamConn's sink, compiled
    so that the connection's calls to it are C calls. It passes the answer on to the lane's
    `sink` (Python object: on_head(status, fields, length), on_body(data), on_done());
    failures, and heads with header_downstream rules, go to the lane's Python functions
    `fail(exchange, error, stale)` and `shape(exchange, status, headers)`."""

    cdef public object handler, route, uset, request, ticket, sink, heads, picker
    cdef public bint told
    cdef object fail, shape
    cdef UpstreamConn paused  # reading stopped for a slow client (on_body said so)

    def __init__(self, handler, route, uset, request, ticket, sink, fail, shape):
        self.handler = handler
        self.route = route
        self.uset = uset
        self.request = request
        self.ticket = ticket
        self.sink = sink
        self.heads = route.heads
        self.picker = uset.picker
        self.told = False
        self.fail = fail
        self.shape = shape

    cpdef on_head(self, UpstreamConn conn, int status, list headers):
        self.told = True
        if self.heads.down_ops is None:
            # the remembered client fields, shared (no copy per request)
            items, length = self.heads.fields_for(headers)
        else:
            status, items, length = self.shape(self, status, headers)
        size = int(length) if length is not None and length.isdigit() else None
        self.sink.on_head(status, items, size)

    cpdef on_body(self, UpstreamConn conn, bytes data):
        if self.sink.on_body(data) and conn.transport is not None and not conn.closed:
            # the client is slow: stop reading the upstream until resume()
            self.paused = conn
            conn.transport.pause_reading()

    def resume(self):
        """Read from the upstream again after on_body asked to stop."""
        cdef UpstreamConn conn = self.paused
        self.paused = None
        if conn is not None and not conn.closed and conn.transport is not None:
            conn.transport.resume_reading()

    cpdef on_done(self, UpstreamConn conn):
        self.paused = None
        self.picker.release(self.ticket)
        self.sink.on_done()

    cpdef on_error(self, UpstreamConn conn, object error, bint stale):
        self.paused = None
        self.fail(self, error, stale)
