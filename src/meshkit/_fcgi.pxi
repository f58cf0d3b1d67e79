# The FastCGI record layer's hot path, Python face (C core in csrc/fcgi_records.c,
# declarations in includes/fcgi_records.pxd). The pure-Python twins are in
# meshkit/web/fastcgi/records.py and response.py; meshkit.web.fastcgi.fast picks one.
# Included by _fastpath.pyx, so module-level helper names here carry a _fc prefix.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from meshkit.includes cimport fcgi_records as cfc

import os as _fc_os


cdef inline str _fc_text(const unsigned char *buf, uint32_t off, uint32_t n):
    return PyUnicode_DecodeLatin1(<const char *>buf + off, n, NULL)


cdef list _fc_items(const unsigned char *out, cfc.fcgi_head *head):
    """The CGI head's fields as (name, value) str pairs (Latin-1)."""
    cdef list items = []
    cdef int i
    for i in range(head.nfields):
        items.append((
            _fc_text(out, head.fields[i].name_off, head.fields[i].name_len),
            _fc_text(out, head.fields[i].value_off, head.fields[i].value_len),
        ))
    return items


def fcgi_quick_reply(bytes data not None):
    """A whole small reply to request 1 in `data` (STDOUT records, then END_REQUEST ending
    `data`) with a plain CGI head: (status, [(name, value)...], content_length or None,
    body, app_status, protocol_status). None for anything else, which the record Decoder
    and response.parse_head then take (and report), exactly as without this function."""
    return _fc_quick(data)


cdef object _fc_quick(bytes data):
    """fcgi_quick_reply's body (the FastCGI lane calls it without a Python call)."""
    cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
    cdef uint32_t app = 0
    cdef uint8_t proto = 0
    cdef long total = cfc.fcgi_scan_whole(buf, n, &app, &proto)
    cdef bytes stdout
    cdef const unsigned char *out
    cdef cfc.fcgi_head head
    cdef int i
    cdef list items
    if total < 0:
        return None
    stdout = PyBytes_FromStringAndSize(NULL, total)
    cfc.fcgi_copy_stdout(buf, n, <unsigned char *>PyBytes_AS_STRING(stdout))
    out = <const unsigned char *>PyBytes_AS_STRING(stdout)
    if cfc.fcgi_parse_head(out, <size_t>total, &head) < 0:
        return None
    items = _fc_items(out, &head)
    body = PyBytes_FromStringAndSize(<const char *>out + head.body_start,
                                     total - <long>head.body_start)
    length = None if head.content_length < 0 else head.content_length
    return (head.status, items, length, body, app, proto)


def fcgi_encode_request(unsigned int request_id, bytes params not None, stdin=b"",
                        bint keep_conn=True):
    """records.encode_request's bytes: BEGIN_REQUEST, the PARAMS stream and, unless `stdin`
    is None (streamed afterwards), the whole STDIN stream, in one buffer."""
    cdef long long stdin_len = -1
    cdef const unsigned char *stdin_buf = NULL
    cdef bytes stdin_bytes
    cdef size_t size
    cdef bytes out
    if request_id > 0xFFFF:
        raise ValueError(f"FastCGI request id {request_id} out of range")
    if stdin is not None:
        # any bytes-like body, as the twin takes (memoryview refuses ints, unlike bytes())
        stdin_bytes = stdin if type(stdin) is bytes else bytes(memoryview(stdin))
        stdin_len = PyBytes_GET_SIZE(stdin_bytes)
        stdin_buf = <const unsigned char *>PyBytes_AS_STRING(stdin_bytes)
    size = cfc.fcgi_request_size(<size_t>PyBytes_GET_SIZE(params), stdin_len)
    out = PyBytes_FromStringAndSize(NULL, size)
    cfc.fcgi_encode_request(<unsigned char *>PyBytes_AS_STRING(out), request_id, keep_conn,
                            <const unsigned char *>PyBytes_AS_STRING(params),
                            <size_t>PyBytes_GET_SIZE(params), stdin_buf, stdin_len)
    return out


def fcgi_encode_pairs(pairs):
    """records.encode_pairs's bytes: each (name, value) as len(name) len(value) name value."""
    cdef list seq = []
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t nl, vl
    cdef bytes name, value, out
    cdef unsigned char *p
    for pair in pairs:
        n, v = pair
        # bytes-like pairs become bytes (the twin joins them); None is refused, not read
        name = n if type(n) is bytes else bytes(memoryview(n))
        value = v if type(v) is bytes else bytes(memoryview(v))
        seq.append((name, value))
        nl = PyBytes_GET_SIZE(name)
        vl = PyBytes_GET_SIZE(value)
        if nl > 0x7FFFFFFF or vl > 0x7FFFFFFF:
            raise ValueError(f"name or value too long for FastCGI ({max(nl, vl)} bytes)")
        size += (1 if nl < 0x80 else 4) + (1 if vl < 0x80 else 4) + nl + vl
    out = PyBytes_FromStringAndSize(NULL, size)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    for pair in seq:
        name, value = pair
        nl = PyBytes_GET_SIZE(name)
        vl = PyBytes_GET_SIZE(value)
        p += cfc.fcgi_put_length(p, <uint32_t>nl)
        p += cfc.fcgi_put_length(p, <uint32_t>vl)
        memcpy(p, PyBytes_AS_STRING(name), nl)
        p += nl
        memcpy(p, PyBytes_AS_STRING(value), vl)
        p += vl
    return out


def fcgi_is_regular_file(str path not None):
    """Is `path` a regular file (stat follows symlinks)? False for any error, as the
    Python twin (os.stat + S_ISREG, meshkit.web.fastcgi.fast) answers."""
    cdef bytes raw
    cdef _fc_stat_t st
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    if b"\0" in raw:
        return False
    if _fc_stat(PyBytes_AS_STRING(raw), &st) != 0:
        return False
    return _FC_S_ISREG(st.st_mode)


def fcgi_has_field(list items not None, str lower_name not None):
    """Is there a field named `lower_name` (given lower-case, ASCII) in `items`, a Headers'
    list of (name, value)? fast.has_field_py's answer: an ASCII-case-insensitive match (a
    name with a non-ASCII letter that lower() would fold is compared the twin's way)."""
    cdef Py_ssize_t want = len(lower_name)
    cdef Py_ssize_t i, j
    cdef str name
    cdef Py_UCS4 ch
    cdef unsigned int c
    for pair in items:
        name = pair[0]
        if len(name) != want:
            if not name.isascii():
                if name.lower() == lower_name:
                    return True
            continue
        for j in range(want):
            ch = name[j]
            c = <unsigned int>ch
            if c >= 0x80:
                if name.lower() == lower_name:
                    return True
                break
            if 0x41 <= c <= 0x5A:
                c += 0x20
            ch = lower_name[j]
            if c != <unsigned int>ch:
                break
        else:
            return True
    return False


cdef extern from "sys/stat.h" nogil:
    ctypedef struct _fc_stat_t "struct stat":
        unsigned int st_mode
    int _fc_stat "stat"(const char *path, _fc_stat_t *buf)
    bint _FC_S_ISREG "S_ISREG"(unsigned int mode)
