# cython: language_level=3
"""HTTP/2 framing by libnghttp2 for meshkit.web.h2ng (the compiled engine; its pure-Python
twin is python-hyper's `h2` under meshkit.web.h2conn).

A Session is nghttp2's sans-IO server session: bytes in (receive), bytes out (send), and
calls into its owner (the connection's I/O shell) for what the shell must act on: a request's
header list, split as it is decoded into split_request's form (method, path, authority, the
fields as (str, str) with cookies joined, size, ...: no list of bytes pairs made and split
again in Python); its body's DATA; the end of the
client's half; resets, SETTINGS, PINGs and GOAWAYs (which the shell meters); the end of a
response (its END_STREAM framed); a stream closed. Responses are submitted in one call with
their body as a Source: a bytes object, a file range read with pread(2) straight into
nghttp2's frame buffer, or chunks a streamed body adds over time. Flow control, HPACK,
SETTINGS, stream states and the inbound checks of RFC 9113 8.1-8.3 are nghttp2's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from posix.types cimport off_t
from posix.unistd cimport pread

import logging
from email.utils import formatdate as _formatdate

cdef extern from "time.h" nogil:
    ctypedef long time_t
    time_t c_time "time"(time_t *t)

cdef extern from "Python.h":
    object PyUnicode_DecodeLatin1(const char *s, Py_ssize_t size, const char *errors)

from nghttp2 cimport *

NO_ERROR = NGHTTP2_NO_ERROR
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM

# what Session.owner_control tells the owner of
CONTROL_SETTINGS = 1
CONTROL_PING = 2
CONTROL_GOAWAY = 3
CONTROL_REFUSED = 4  # nghttp2 refused a stream past SETTINGS_MAX_CONCURRENT_STREAMS
CONTROL_BIG_HEAD = 5  # a header block past the session's cap (the session is terminated)

# A request's key (for meshkit.web.respcache's remembered responses): b"h2\0" and then each
# field as name NUL value LF, up to KEY_MAX bytes (longer heads have no key). Field values
# cannot hold NUL, CR or LF (nghttp2 refuses them), so one key is one header list.
KEY_MAX = 4096
cdef enum:
    _KEY_MAX = 4096


cdef class Source:
    """A response body for nghttp2's data provider: bytes, a file range, or streamed
    chunks (add(), then eof)."""

    cdef bytes head
    cdef Py_ssize_t off
    cdef list more
    cdef int fd
    cdef off_t foff
    cdef off_t fleft
    cdef public bint eof
    cdef public bint deferred
    cdef public Py_ssize_t sent
    cdef public Py_ssize_t queued

    def __cinit__(self):
        self.fd = -1
        self.more = []

    @staticmethod
    def of_bytes(bytes data):
        cdef Source src = Source()
        src.head = data
        src.queued = PyBytes_GET_SIZE(data)
        src.eof = True
        return src

    @staticmethod
    def of_file(int fd, off_t offset, off_t length):
        """A file range, read when nghttp2 frames it (the fd stays the caller's)."""
        cdef Source src = Source()
        src.fd = fd
        src.foff = offset
        src.fleft = length
        src.eof = True
        return src

    def add(self, bytes chunk):
        """A streamed body's next piece (the caller resumes the stream)."""
        if not chunk:
            return
        if self.head is None:
            self.head = chunk
            self.off = 0
        else:
            self.more.append(chunk)
        self.queued += PyBytes_GET_SIZE(chunk)


cdef ssize_t _read_source(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *source,
                          void *user_data) noexcept:
    cdef Source src = <Source>source.ptr
    cdef ssize_t n = 0
    cdef Py_ssize_t avail
    cdef size_t want
    if src.head is not None:
        avail = PyBytes_GET_SIZE(src.head) - src.off
        n = avail if <size_t>avail < length else <ssize_t>length
        memcpy(buf, PyBytes_AS_STRING(src.head) + src.off, n)
        src.off += n
        if src.off >= PyBytes_GET_SIZE(src.head):
            src.off = 0
            src.head = src.more.pop(0) if src.more else None
        src.queued -= n
    elif src.fleft > 0:
        want = length if <off_t>length < src.fleft else <size_t>src.fleft
        n = pread(src.fd, buf, want, src.foff)
        if n <= 0:  # the file got shorter than its Content-Length: RST_STREAM INTERNAL_ERROR
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        src.foff += n
        src.fleft -= n
    elif not src.eof:
        src.deferred = True
        return NGHTTP2_ERR_DEFERRED
    src.sent += n
    if src.eof and src.head is None and src.fleft <= 0:
        flags[0] |= NGHTTP2_DATA_FLAG_EOF
    return n


cdef class Session:
    """One HTTP/2 server connection's nghttp2 session (see the module)."""

    cdef nghttp2_session *s
    cdef object on_request
    cdef object on_data
    cdef object on_end
    cdef object on_reset
    cdef object on_closed
    cdef object on_sent_end
    cdef object on_control
    cdef dict sources
    cdef int32_t cur_sid
    cdef list cur  # the request's fields as (str, str), cookies apart (split_request's form)
    cdef Py_ssize_t cur_size
    cdef bytes cur_method
    cdef bytes cur_path
    cdef bytes cur_authority
    cdef list cur_cookies
    cdef object cur_host
    cdef object cur_clen
    cdef bint cur_long
    cdef Py_ssize_t line_max
    cdef int32_t ended_sid  # the stream whose END_STREAM the owner was just told of
    cdef char *obuf  # send()'s frames gathered into one buffer
    cdef Py_ssize_t ocap
    cdef Py_ssize_t cap
    cdef object error
    cdef bytes patch
    cdef char *kbuf
    cdef Py_ssize_t klen
    cdef public bint stopped
    cdef object owner  # the connection, for the compiled stream path (set_stream_path)
    cdef bint fast

    def __cinit__(self, owner, uint32_t max_streams, uint32_t stream_cap,
                  uint32_t max_header_list, Py_ssize_t cap, int32_t window,
                  Py_ssize_t line_max=8190):
        cdef nghttp2_session_callbacks *cbs
        cdef nghttp2_option *opt
        cdef nghttp2_settings_entry iv[3]
        self.on_request = owner._ng_request
        self.on_data = owner._ng_data
        self.on_end = owner._ng_end
        self.on_reset = owner._ng_reset
        self.on_closed = owner._ng_closed
        self.on_sent_end = owner._ng_sent_end
        self.on_control = owner._ng_control
        self.owner = owner
        self.fast = _SP_READY and getattr(owner, "_ng_fast", False)
        self.sources = {}
        self.cap = cap
        self.line_max = line_max
        self.kbuf = <char *>malloc(_KEY_MAX)
        if self.kbuf is NULL:
            raise MemoryError()
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(cbs, _header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _frame_recv)
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, _frame_send)
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, _invalid_frame)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _stream_close)
        if nghttp2_option_new(&opt) != 0:
            nghttp2_session_callbacks_del(cbs)
            raise MemoryError()
        # credit goes back as handlers read request bodies (consume), not on arrival
        nghttp2_option_set_no_auto_window_update(opt, 1)
        rv = nghttp2_session_server_new2(&self.s, cbs, <void *>self, opt)
        nghttp2_option_del(opt)
        nghttp2_session_callbacks_del(cbs)
        if rv != 0:
            raise MemoryError()
        # Streams past the advertised SETTINGS_MAX_CONCURRENT_STREAMS are refused one by one
        # (RST_STREAM REFUSED_STREAM, RFC 9113 5.1.2), as the h2 engine does, but nghttp2 ends
        # the connection once the client has acknowledged the limit. So nghttp2 enforces
        # stream_cap (as its local setting) and the client is told max_streams: the value
        # in the SETTINGS frame is replaced on its way out; the owner refuses past max_streams.
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = stream_cap
        iv[1].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[1].value = max_header_list
        iv[2].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[2].value = 0
        nghttp2_submit_settings(self.s, NGHTTP2_FLAG_NONE, iv, 3)
        self.patch = max_streams.to_bytes(4, "big")
        nghttp2_session_set_local_window_size(self.s, NGHTTP2_FLAG_NONE, 0, window)

    def __dealloc__(self):
        free(self.kbuf)
        self.kbuf = NULL
        free(self.obuf)
        self.obuf = NULL
        if self.s is not NULL:
            nghttp2_session_del(self.s)
            self.s = NULL

    cdef _raise(self):
        err = self.error
        self.error = None
        raise err

    def receive(self, bytes data):
        """Feed bytes read from the peer; a negative result is nghttp2's fatal error code
        (the connection is over)."""
        cdef ssize_t rv = nghttp2_session_mem_recv(
            self.s, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if self.error is not None:
            self._raise()
        return rv

    def send(self, Py_ssize_t limit):
        """Frames to write, up to about `limit` bytes (b"" when nothing is due)."""
        cdef const uint8_t *p
        cdef ssize_t n
        cdef Py_ssize_t total = 0, cap
        cdef char *grown
        first = None
        while total < limit:
            n = nghttp2_session_mem_send(self.s, &p)
            if n <= 0:
                break
            if total + n > self.ocap:  # frames are gathered in one buffer, one bytes made
                cap = max(total + n, 2 * self.ocap, 16384)
                grown = <char *>realloc(self.obuf, cap)
                if grown is NULL:
                    raise MemoryError()
                self.obuf = grown
                self.ocap = cap
            memcpy(self.obuf + total, p, n)
            total += n
        if self.error is not None:
            self._raise()
        if total == 0:
            return b""
        first = PyBytes_FromStringAndSize(self.obuf, total)
        if self.ocap > 65536:  # a big body's burst: do not keep its buffer
            free(self.obuf)
            self.obuf = NULL
            self.ocap = 0
        if self.patch is not None:
            first = self._patch_settings(first)
        return first

    cdef bytes _patch_settings(self, bytes out):
        """The advertised SETTINGS_MAX_CONCURRENT_STREAMS (see __cinit__) in the session's
        first SETTINGS frame, which is in its first output."""
        cdef Py_ssize_t pos = 0, size, n = len(out), at
        self_patch = self.patch
        self.patch = None
        while pos + 9 <= n:
            size = (out[pos] << 16) | (out[pos + 1] << 8) | out[pos + 2]
            if out[pos + 3] == NGHTTP2_SETTINGS and not (out[pos + 4] & NGHTTP2_FLAG_ACK):
                at = pos + 9
                while at + 6 <= pos + 9 + size and at + 6 <= n:
                    if out[at] == 0 and out[at + 1] == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS:
                        return out[:at + 2] + self_patch + out[at + 6:]
                    at += 6
                return out
            pos += 9 + size
        return out

    def respond(self, int32_t sid, list fields, Source body=None):
        """HEADERS (and with a body, its DATA as the windows allow) for stream sid; END_STREAM
        on HEADERS without a body. 0, or nghttp2's negative error code."""
        cdef Py_ssize_t n = len(fields)
        cdef nghttp2_nv *nva = _nva(fields)
        cdef nghttp2_data_provider prd
        cdef int rv
        if body is not None:
            prd.source.ptr = <void *>body
            prd.read_callback = _read_source
            self.sources[sid] = body
            rv = nghttp2_submit_response(self.s, sid, nva, n, &prd)
        else:
            rv = nghttp2_submit_response(self.s, sid, nva, n, NULL)
        free(nva)
        if rv != 0 and body is not None:
            self.sources.pop(sid, None)
        return rv

    def push(self, int32_t parent, list fields):
        """PUSH_PROMISE on parent: the promised stream's id, or nghttp2's negative error."""
        cdef nghttp2_nv *nva = _nva(fields)
        cdef int32_t rv = nghttp2_submit_push_promise(self.s, 0, parent, nva, len(fields), NULL)
        free(nva)
        return rv

    def resume(self, int32_t sid, Source body):
        if body.deferred:
            body.deferred = False
            nghttp2_session_resume_data(self.s, sid)

    def reset(self, int32_t sid, uint32_t code):
        nghttp2_submit_rst_stream(self.s, NGHTTP2_FLAG_NONE, sid, code)

    def consume(self, int32_t sid, size_t n):
        nghttp2_session_consume(self.s, sid, n)

    def goaway(self, int32_t last, uint32_t code):
        """A GOAWAY that does not end the session (graceful shutdown's first one)."""
        nghttp2_submit_goaway(self.s, NGHTTP2_FLAG_NONE, last, code, NULL, 0)

    def terminate(self, uint32_t code, int32_t last=-1):
        """The final GOAWAY: nothing more is read; the session ends once it is sent."""
        self.stopped = True
        if last < 0:
            nghttp2_session_terminate_session(self.s, code)
        else:
            nghttp2_session_terminate_session2(self.s, last, code)

    @property
    def last_stream_id(self):
        return nghttp2_session_get_last_proc_stream_id(self.s)

    @property
    def push_enabled(self):
        return nghttp2_session_get_remote_settings(self.s, NGHTTP2_SETTINGS_ENABLE_PUSH) != 0

    @property
    def alive(self):
        """False once the session has nothing more to read or write (after a GOAWAY)."""
        return nghttp2_session_want_read(self.s) != 0 or nghttp2_session_want_write(self.s) != 0


cdef nghttp2_nv *_nva(list fields) except NULL:
    cdef Py_ssize_t n = len(fields), i = 0
    cdef nghttp2_nv *nva = <nghttp2_nv *>malloc((n if n else 1) * sizeof(nghttp2_nv))
    cdef bytes name, value
    if nva is NULL:
        raise MemoryError()
    try:
        for pair in fields:
            name = <bytes?>pair[0]
            value = <bytes?>pair[1]
            nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
            nva[i].namelen = PyBytes_GET_SIZE(name)
            nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
            nva[i].valuelen = PyBytes_GET_SIZE(value)
            nva[i].flags = NGHTTP2_NV_FLAG_NONE  # nghttp2 copies them on submit
            i += 1
    except BaseException:
        free(nva)
        raise
    return nva


cdef int _begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    self.cur_size = 0
    if frame.hd.type == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
        self.cur_sid = frame.hd.stream_id
        self.cur = []
        self.cur_method = self.cur_path = self.cur_authority = b""
        self.cur_cookies = None
        self.cur_host = self.cur_clen = None
        self.cur_long = False
        memcpy(self.kbuf, b"h2\0", 3)
        self.klen = 3
    else:  # trailers (ignored, as the h2 engine does)
        self.cur_sid = 0
        self.cur = None
    return 0


cdef int _header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                 size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                 void *ud) noexcept:
    cdef Session self = <Session>ud
    if self.stopped:
        return 0
    self.cur_size += namelen + valuelen + 32
    if self.cur_size > self.cap:
        self.cur = None
        self.cur_sid = 0
        try:
            self.on_control(CONTROL_BIG_HEAD)
        except BaseException as exc:
            self.error = exc
            return NGHTTP2_ERR_CALLBACK_FAILURE
        return 0
    if self.cur is not None and frame.hd.stream_id == self.cur_sid:
        try:
            _split_field(self, name, namelen, value, valuelen)
        except BaseException as exc:
            self.error = exc
            return NGHTTP2_ERR_CALLBACK_FAILURE
        if self.klen >= 0:
            if self.klen + <Py_ssize_t>(namelen + valuelen + 2) > _KEY_MAX:
                self.klen = -1
            else:
                memcpy(self.kbuf + self.klen, name, namelen)
                self.klen += namelen
                self.kbuf[self.klen] = 0
                memcpy(self.kbuf + self.klen + 1, value, valuelen)
                self.klen += valuelen + 2
                self.kbuf[self.klen - 1] = 10
    return 0


cdef inline bint _is(const uint8_t *name, size_t namelen, const char *lit, size_t n) noexcept:
    return namelen == n and memcmp(name, lit, n) == 0


cdef int _split_field(Session self, const uint8_t *name, size_t namelen, const uint8_t *value,
                      size_t valuelen) except -1:
    """One field of the request's header list into split_request's form as it arrives (the
    size is counted by _header): no (bytes, bytes) list made and split again."""
    if namelen and name[0] == 58:  # ':'
        if _is(name, namelen, b":method", 7):
            self.cur_method = PyBytes_FromStringAndSize(<const char *>value, valuelen)
        elif _is(name, namelen, b":path", 5):
            self.cur_path = PyBytes_FromStringAndSize(<const char *>value, valuelen)
        elif _is(name, namelen, b":authority", 10):
            self.cur_authority = PyBytes_FromStringAndSize(<const char *>value, valuelen)
        return 0
    if <Py_ssize_t>(namelen + valuelen + 2) > self.line_max:
        self.cur_long = True
    sval = PyUnicode_DecodeLatin1(<const char *>value, valuelen, NULL)
    if _is(name, namelen, b"cookie", 6):
        if self.cur_cookies is None:
            self.cur_cookies = [sval]
        else:
            self.cur_cookies.append(sval)
        return 0
    if _is(name, namelen, b"host", 4):
        if self.cur_host is None:
            self.cur_host = sval
    elif _is(name, namelen, b"content-length", 14):
        if self.cur_clen is None:
            self.cur_clen = sval
    self.cur.append((PyUnicode_DecodeLatin1(<const char *>name, namelen, NULL), sval))
    return 0


cdef int _frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef uint8_t t = frame.hd.type
    cdef int32_t sid = frame.hd.stream_id
    cdef uint8_t fl = frame.hd.flags
    if self.stopped:
        return 0
    try:
        if t == NGHTTP2_DATA:
            if frame.data.padlen:  # padding is flow-controlled but never read
                nghttp2_session_consume(s, sid, frame.data.padlen)
            if fl & NGHTTP2_FLAG_END_STREAM:
                self.on_end(sid)
        elif t == NGHTTP2_HEADERS:
            if frame.headers.cat == NGHTTP2_HCAT_REQUEST and sid == self.cur_sid:
                items = self.cur
                self.cur = None
                self.cur_sid = 0
                if self.cur_cookies is not None:
                    items.append(("cookie", "; ".join(self.cur_cookies)))
                fields = (self.cur_method, self.cur_path, self.cur_authority, items,
                          self.cur_size, self.cur_long, self.cur_host, self.cur_clen)
                key = (
                    PyBytes_FromStringAndSize(self.kbuf, self.klen) if self.klen > 0 else None
                )
                if self.fast and (fl & NGHTTP2_FLAG_END_STREAM) and _fast_request(
                    self, self.owner, sid, fields, key
                ):
                    return 0
                self.on_request(sid, fields, key, (fl & NGHTTP2_FLAG_END_STREAM) != 0)
            elif fl & NGHTTP2_FLAG_END_STREAM:
                self.on_end(sid)
        elif t == NGHTTP2_RST_STREAM:
            self.on_reset(sid)
        elif t == NGHTTP2_SETTINGS:
            if not (fl & NGHTTP2_FLAG_ACK):
                self.on_control(CONTROL_SETTINGS)
        elif t == NGHTTP2_PING:
            if not (fl & NGHTTP2_FLAG_ACK):
                self.on_control(CONTROL_PING)
        elif t == NGHTTP2_GOAWAY:
            self.on_control(CONTROL_GOAWAY)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _invalid_frame(nghttp2_session *s, const nghttp2_frame *frame, int lib_error_code,
                        void *ud) noexcept:
    cdef Session self = <Session>ud
    if self.stopped or lib_error_code != NGHTTP2_ERR_REFUSED_STREAM:
        return 0
    try:
        self.on_control(CONTROL_REFUSED)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                     size_t n, void *ud) noexcept:
    cdef Session self = <Session>ud
    if self.stopped:
        return 0
    try:
        self.on_data(sid, PyBytes_FromStringAndSize(<const char *>data, n))
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef uint8_t t = frame.hd.type
    cdef Source src
    if not (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) or (
        t != NGHTTP2_DATA and t != NGHTTP2_HEADERS
    ):
        return 0
    try:
        src = self.sources.get(frame.hd.stream_id)
        sent = src.sent if src is not None else 0
        if not (self.fast and _fast_end(self.owner, frame.hd.stream_id, sent)):
            self.on_sent_end(frame.hd.stream_id, sent)
        self.ended_sid = frame.hd.stream_id
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef Source src
    try:
        src = self.sources.pop(sid, None)
        if sid == self.ended_sid and code == NGHTTP2_NO_ERROR:
            # nghttp2 closes a stream right after its END_STREAM is framed: the owner was
            # told (on_sent_end) and has let the stream go, so this call would find nothing
            self.ended_sid = 0
            return 0
        self.on_closed(sid, src.sent if src is not None else 0)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


# the stream path and the per-request helpers (split_request, response_fields)
include "_h2stream.pxi"
