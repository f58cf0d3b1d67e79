# Declarations of the request-head scanner's C API (http_head.h); the Python face is in
# _http_head.pxi.
from libc.stdint cimport uint32_t


cdef extern from "http_head.h" nogil:
    enum hh_result:
        HH_ACCEPT
        HH_DEFER
        HH_INCOMPLETE

    struct hh_field:
        uint32_t name, name_len, value, value_len

    struct hh_limits:
        size_t header_limit
        size_t max_fields
        size_t max_field_line

    struct hh_head:
        size_t end
        uint32_t method, method_len, target, target_len
        int minor
        int keep_alive
        int host
        size_t nfields

    int hh_scan(const char *buf, size_t len, size_t start, const hh_limits *lim,
                hh_head *head, hh_field *fields)
