# Included by _h2ng.pyx: the per-request work of meshkit._h2ng apart from the framing (the
# compiled stream path, and the compiled twins of split_request and response_fields).

# ---------------------------------------------------------------------- the stream path
# A request without a body, compiled: what H2Remembering._request, H2Connection._on_request
# and H2Remembering._dispatch do for it (the Request, the Stream, the handler, then the
# connection's _respond), without their Python frames. Anything else goes to those methods
# (the twin, and the h2 engine's only path): a remembered answer for its key, a GOAWAY sent,
# streams full, a head over the limits (431), CONNECT or a target parse_target refuses, a
# handler's awaitable result. meshkit.web.h2ng hands the classes and limits over once
# (set_stream_path): this module imports nothing of meshkit.web.
cdef bint _SP_READY = False
_log = logging.getLogger("meshkit.web")
cdef object _SP_Request, _SP_Headers, _SP_EmptyBody, _SP_Stream, _SP_Response
cdef object _SP_parse_target, _SP_HttpError, _SP_answer_for, _SP_time, _SP_FileBody
cdef list _SP_current, _SP_asked
cdef Py_ssize_t _SP_max_streams, _SP_max_header_list
# the rule table of compiled sites (meshkit.web.h2rules: compiled(handler), answer(conn,
# sid, parts)) and the handler last asked about (one Python call per handler, not request)
cdef object _SP_rules_compiled = None
cdef object _SP_rules_answer = None
cdef object _SP_rules_handler = None
cdef bint _SP_rules_on = False


def set_rules_path(compiled, answer):
    """meshkit.web.h2rules' compiled and answer: a stream of a compiled site is offered to
    the rule table before the stream path takes it (None, None: never)."""
    global _SP_rules_compiled, _SP_rules_answer, _SP_rules_handler, _SP_rules_on
    _SP_rules_compiled, _SP_rules_answer = compiled, answer
    _SP_rules_handler = None
    _SP_rules_on = False


def set_stream_path(request, headers, empty_body, stream, response, file_body, parse_target,
                    http_error, answer_for, list current, list asked,
                    Py_ssize_t max_streams, Py_ssize_t max_header_list):
    """The objects of meshkit.web the compiled stream path builds and calls (see above)."""
    global _SP_READY, _SP_Request, _SP_Headers, _SP_EmptyBody, _SP_Stream, _SP_Response
    global _SP_parse_target, _SP_HttpError, _SP_answer_for, _SP_current, _SP_asked
    global _SP_max_streams, _SP_max_header_list, _SP_time, _SP_FileBody
    import time
    _SP_Request, _SP_Headers, _SP_EmptyBody = request, headers, empty_body
    _SP_Stream, _SP_Response, _SP_FileBody = stream, response, file_body
    _SP_parse_target, _SP_HttpError, _SP_answer_for = parse_target, http_error, answer_for
    _SP_current, _SP_asked = current, asked
    _SP_max_streams, _SP_max_header_list = max_streams, max_header_list
    _SP_time = time.time
    _SP_READY = True


cdef bint _fast_request(Session self, conn, int32_t sid, tuple parts, key) except? True:
    """True when the request was taken here (see above), False: the owner's _ng_request
    takes it, nothing was changed."""
    global _SP_rules_handler, _SP_rules_on
    server = conn._server
    if key is not None:
        if not server._caching:
            key = None
        elif key in server._cache.entries:
            return False  # a remembered answer (or a stale one to drop): _request's
    if _SP_rules_answer is not None:
        handler = server._handler
        if handler is not _SP_rules_handler:
            _SP_rules_on = bool(_SP_rules_compiled(handler))
            _SP_rules_handler = handler
        if _SP_rules_on and _SP_rules_answer(conn, sid, parts):
            return True
    streams = conn._streams
    if conn._goaway_at is not None or len(streams) >= _SP_max_streams:
        return False
    method, path, authority, items, size, long_line, host_field, cl = parts
    if long_line or len(<list>items) > server._max_fields or (
        size > min(_SP_max_header_list, server._header_limit)
    ):
        return False
    if method == b"CONNECT":
        return False
    mname = (<bytes>method).decode("latin-1")
    try:
        target = _SP_parse_target(path, mname)
    except _SP_HttpError:
        return False
    headers = _SP_Headers(items)
    host = (<bytes>authority).decode("latin-1")
    if host:
        if host_field is None:
            headers.add("host", host)
    else:
        host = host_field or ""
    a0, a1, a2, a3 = conn._addrs
    request = _SP_Request(mname, (<bytes>path).decode("latin-1"), target.path, target.query,
                          "2.0", headers, _SP_EmptyBody(), conn._scheme, host, a0, a1, a2, a3,
                          _SP_time())
    st = _SP_Stream(sid, request, None)
    streams[sid] = st
    conn._active_since = server._now
    conn.requests += 1
    asked = _SP_asked[0]
    _SP_current[0] = (conn, sid, host)
    try:
        result = server._handler(request)
    except Exception as exc:
        result = _SP_answer_for(exc, request)
    finally:
        _SP_current[0] = None
    if isinstance(result, _SP_Response):
        if key is not None and result.validators is not None and asked == _SP_asked[0]:
            conn._remember(key, result, request)
        if not _fast_respond(self, conn, sid, st, result, mname):
            conn._respond(st, result)
    else:
        conn._later(st, result)
    return True


cdef bint _fast_end(conn, int32_t sid, Py_ssize_t sent) except? True:
    """NgH2Connection._ng_sent_end for a plain stream (no request body, no producer waiting,
    no on_complete such as an access log): let it go here. False: the owner's method ends it."""
    streams = conn._streams
    st = streams.get(sid)
    if st is None or st.closed:
        return True  # already let go (a reset, or the connection's end)
    if st.body is not None or st.waiter is not None or st.request.on_complete:
        return False
    st.sent = sent
    st.closed = True
    del streams[sid]
    conn._sending.pop(sid, None)
    release = st.release
    if release is not None:
        st.release = None
        try:
            release()
        except Exception:
            _log.exception("releasing a file body failed")
    if not streams:
        conn._active_since = conn._server._now
        if conn._goaway_at is not None:
            conn._maybe_done()
    return True


cdef bint _fast_respond(Session self, conn, int32_t sid, st, response, str method) except? True:
    """NgH2Connection._respond for the common answer: a status with a body, the body bytes
    or a file (its bytes read already, or a range to pread), fields the compiled
    response_fields accepts. False: nothing done, the connection's _respond does it (HEAD,
    1xx/204/304, an upgrade, an empty or streamed body, a field with CR/LF...)."""
    cdef int status = response.status
    cdef Source src
    if response.upgrade is not None or st.closed or method == "HEAD" or status < 200 or (
        status == 204 or status == 304
    ):
        return False
    body = response.body
    if type(body) is bytes:
        if not PyBytes_GET_SIZE(body):
            return False
        length = PyBytes_GET_SIZE(body)
    elif type(body) is _SP_FileBody:
        length = body.length
        if type(length) is not int or length <= 0:
            return False
    else:
        return False
    try:
        fields = response_fields_now(status, response.headers, length)
    except ValueError:
        return False
    st.response = response
    if type(body) is bytes:
        src = Source.of_bytes(body)
    else:
        st.release = body.release
        data = body.data
        if data is not None:
            src = Source.of_bytes(bytes(data))
        else:
            src = Source.of_file(body.fd, body.offset, length)
    if self.respond(sid, fields, src) != 0:
        conn._respond_failed(st, body)
        return True
    st.src = src
    return True


# ---------------------------------------------------------------------- per-request helpers
# Compiled twins of meshkit.web.h2conn.split_request and meshkit.web.h2stream.response_fields
# (tests compare them).

cdef frozenset _HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te"})
cdef dict _STATUS = {}
# response_fields' answers for this second's Date, by (status, length, fields): a file served
# again has the same fields (type, ETag, Last-Modified...), so its HEADERS list is reused
cdef dict _FIELDS = {}
cdef str _FIELDS_DATE = ""
_FIELDS_MAX = 256


def split_request(list raw, Py_ssize_t line_max):
    """A request's header list (as nghttp2 gave it) split: (method, path, authority, fields
    as (str, str) with cookie fields joined last, RFC 9113 size, a field line past line_max,
    the first `host` field's value or None, the first `content-length`'s or None)."""
    cdef bytes name, value
    cdef Py_ssize_t size = 0, nl, vl
    cdef bint long_line = False
    method = path = authority = b""
    items = []
    cookies = None
    host = clen = None
    for pair in raw:
        name = <bytes>pair[0]
        value = <bytes>pair[1]
        nl = PyBytes_GET_SIZE(name)
        vl = PyBytes_GET_SIZE(value)
        size += nl + vl + 32
        if nl and PyBytes_AS_STRING(name)[0] == 58:  # ':'
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if nl + vl + 2 > line_max:
            long_line = True
        sval = value.decode("latin-1")
        if name == b"cookie":
            if cookies is None:
                cookies = [sval]
            else:
                cookies.append(sval)
            continue
        if name == b"host":
            if host is None:
                host = sval
        elif name == b"content-length":
            if clen is None:
                clen = sval
        items.append((name.decode("latin-1"), sval))
    if cookies is not None:
        items.append(("cookie", "; ".join(cookies)))
    return method, path, authority, items, size, long_line, host, clen


cdef bint _bad_name(str low):
    cdef Py_UCS4 c
    if not low:
        return True
    for c in low:
        if c >= 128 or not (
            (c >= 97 and c <= 122) or (c >= 48 and c <= 57)
            or c in "!#$%&'*+.^_`|~-"
        ):
            return True
    return False


cdef bint _bad_value(str value):
    cdef Py_UCS4 c
    for c in value:
        if c == 13 or c == 10 or c == 0:
            return True
    return False


cdef long _now_second = -1
cdef str _now_date = ""


def response_fields_now(int status, headers, length):
    """response_fields with this second's Date (meshkit.web.http1.http_date's form, made
    here once a second), for the connection's _fields without a Python frame."""
    global _now_second, _now_date
    cdef long sec = <long>c_time(NULL)
    if sec != _now_second:
        _now_date = _formatdate(sec, usegmt=True)
        _now_second = sec
    return response_fields(status, headers, length, _now_date)


def response_fields(int status, headers, length, str date):
    """The response's HEADERS (see meshkit.web.h2stream.response_fields), `date` for Date.
    The list may be shared with other responses: it is not to be changed."""
    global _FIELDS_DATE
    if date != _FIELDS_DATE:
        _FIELDS.clear()
        _FIELDS_DATE = date
    try:
        key = (status, length, tuple(headers))
        out = _FIELDS.get(key)
    except TypeError:  # a field that is not a (str, str) pair: no memory
        key = out = None
    if out is None:
        out = _response_fields(status, headers, length, date)
        if key is not None:
            if len(_FIELDS) >= _FIELDS_MAX:
                _FIELDS.clear()
            _FIELDS[key] = out
    return out


cdef list _response_fields(int status, headers, length, str date):
    cdef bint has_server = False, has_date = False, has_length = False
    code = _STATUS.get(status)
    if code is None:
        code = _STATUS[status] = str(status).encode()
    out = [(b":status", code)]
    for name, value in headers:
        low = name.lower()
        if low in _HOP:
            continue
        if low == "server":
            has_server = True
            if not value:
                continue
        elif low == "date":
            has_date = True
        elif low == "content-length":
            has_length = True
        if _bad_value(value) or _bad_name(low):
            raise ValueError("CR, LF or NUL inside a response header")
        out.append((low.encode("latin-1", "replace"),
                    value.strip(" \t").encode("latin-1", "replace")))
    if not has_server:
        out.append((b"server", b"meshkit"))
    if not has_date:
        out.append((b"date", date.encode("latin-1")))
    if length is not None and not has_length and status >= 200 and status != 204 and (
        status != 304
    ):
        out.append((b"content-length", str(length).encode()))
    return out
