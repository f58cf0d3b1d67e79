# The request-head scanner, Python face (C core in csrc/http_head.c, declarations in
# includes/http_head.pxd, pure-Python twin in meshkit/web/headparse.py).
# Included by _fastpath.pyx, so module-level helper names here carry a _hh prefix.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeLatin1
from meshkit.includes cimport http_head as chh

HEAD_INCOMPLETE = chh.HH_INCOMPLETE
HEAD_DEFER = chh.HH_DEFER

cdef dict _hh_methods = {}
cdef int _HH_STACK = 128


def scan_head(bytes data not None, Py_ssize_t start, Py_ssize_t header_limit,
              Py_ssize_t max_fields, Py_ssize_t max_field_line):
    """Read the request head at data[start:]: (end, method, target, version, items, host,
    keep) for a request the lane dispatches, or HEAD_INCOMPLETE, HEAD_DEFER or a refusal
    status (meshkit.web.headparse.scan_head is the twin, with the rules)."""
    cdef chh.hh_field stack_fields[128]
    cdef chh.hh_field *fields = stack_fields
    cdef chh.hh_limits lim
    cdef chh.hh_head head
    cdef const char *buf = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int rc
    cdef size_t i
    cdef list items
    cdef object method, name, value, host
    if start < 0 or start > n:
        raise ValueError("start out of range")
    if max_fields < 0 or header_limit < 0 or max_field_line < 0:
        raise ValueError("negative limit")
    lim.header_limit = <size_t>header_limit
    lim.max_fields = <size_t>max_fields
    lim.max_field_line = <size_t>max_field_line
    if max_fields + 1 > _HH_STACK:
        fields = <chh.hh_field *>PyMem_Malloc(sizeof(chh.hh_field) * (max_fields + 1))
        if fields == NULL:
            raise MemoryError()
    try:
        rc = chh.hh_scan(buf, <size_t>n, <size_t>start, &lim, &head, fields)
        if rc != chh.HH_ACCEPT:
            return rc
        key = buf[head.method:head.method + head.method_len]
        method = _hh_methods.get(key)
        if method is None:
            method = key.decode("latin-1")
            _hh_methods[key] = method
        items = []
        host = ""
        for i in range(head.nfields):
            name = PyUnicode_DecodeLatin1(buf + fields[i].name, fields[i].name_len, NULL)
            value = PyUnicode_DecodeLatin1(buf + fields[i].value, fields[i].value_len, NULL)
            items.append((name, value))
            if <int>i == head.host:
                host = value
        return (
            <Py_ssize_t>head.end,
            method,
            buf[head.target:head.target + head.target_len],
            "1.1" if head.minor == 1 else "1.0",
            items,
            host,
            bool(head.keep_alive),
        )
    finally:
        if fields != stack_fields:
            PyMem_Free(fields)
