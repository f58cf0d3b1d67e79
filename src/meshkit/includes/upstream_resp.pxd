# Declarations of the proxy's upstream response path in C (upstream_resp.h); the Python
# face is _upstream.pxi.
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "upstream_resp.h" nogil:
    enum:
        UP_MAX_HEAD
        UP_MAX_FIELDS
        UP_OK
        UP_DECLINE
        UP_BODY_NONE
        UP_BODY_LENGTH
        UP_BODY_CHUNKED
        UP_BODY_CLOSE
        UP_F_HOP
        UP_CHUNK_MORE
        UP_CHUNK_DONE
        UP_CHUNK_ERROR

    ctypedef struct up_field:
        uint32_t name_off
        uint32_t name_len
        uint32_t value_off
        uint32_t value_len
        uint32_t flags

    ctypedef struct up_head:
        int status
        int framing
        int keep
        int interim
        int conn_tokens
        long long content_length
        int nfields
        up_field fields[UP_MAX_FIELDS]

    ctypedef struct up_chunked:
        int state
        uint64_t left
        int digits
        uint32_t trailer

    int up_parse_head(const unsigned char *buf, size_t len, int head_only, up_head *out)
    void up_mark_connection_tokens(const unsigned char *buf, up_head *h)
    int up_dechunk(up_chunked *st, const unsigned char *inp, size_t len, unsigned char *out,
                   size_t *used, size_t *produced)
