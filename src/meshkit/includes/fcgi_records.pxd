# Declarations of the FastCGI record layer's C core (fcgi_records.h); the Python functions
# are in _fcgi.pxi.
from libc.stdint cimport uint8_t, uint32_t


cdef extern from "fcgi_records.h" nogil:
    enum:
        FCGI_MAX_HEAD
        FCGI_MAX_FIELDS

    ctypedef struct fcgi_field:
        uint32_t name_off
        uint32_t name_len
        uint32_t value_off
        uint32_t value_len

    ctypedef struct fcgi_head:
        int status
        long long content_length
        size_t body_start
        int nfields
        fcgi_field fields[FCGI_MAX_FIELDS]

    long fcgi_scan_whole(const unsigned char *buf, size_t len, uint32_t *app, uint8_t *proto)
    void fcgi_copy_stdout(const unsigned char *buf, size_t len, unsigned char *out)
    int fcgi_parse_head(const unsigned char *buf, size_t len, fcgi_head *head)
    size_t fcgi_request_size(size_t params_len, long long stdin_len)
    size_t fcgi_encode_request(unsigned char *out, unsigned request_id, int keep_conn,
                               const unsigned char *params, size_t params_len,
                               const unsigned char *stdin_buf, long long stdin_len)
    size_t fcgi_stdin_size(size_t stdin_len)
    size_t fcgi_put_stdin(unsigned char *out, unsigned request_id, const unsigned char *data,
                          size_t n)
    size_t fcgi_put_length(unsigned char *out, uint32_t n)
