/* http_head.h - C API of the HTTP/1 request-head scanner (meshkit web's head lane).
 *
 * hh_scan() reads one complete request head from a buffer (the bytes a connection just
 * received) in a single pass and takes every decision the httptools path takes for it, in the
 * same order (see meshkit/web/headparse.py, its pure-Python twin, for the rules): llhttp's
 * request-line and field-line grammar, the per-field limits, Content-Length and
 * Transfer-Encoding conflicts (request smuggling), obs-fold, bare CR/LF, NUL and control
 * bytes, Host, Expect, http1.check_framing's framing rules, the HTTP version and the size
 * limit. Fields come back as offsets into the buffer; nothing is copied.
 */
#ifndef MESHKIT_HTTP_HEAD_H
#define MESHKIT_HTTP_HEAD_H

#include <stddef.h>
#include <stdint.h>

enum hh_result {
    HH_ACCEPT = 0,      /* a request without a body: dispatch it */
    HH_DEFER = -1,      /* a body, an upgrade or a rare form: leave it to httptools */
    HH_INCOMPLETE = -2, /* no CRLF CRLF in the buffer yet */
    /* anything > 0 is the HTTP status the request is refused with */
};

struct hh_field {
    uint32_t name, name_len;   /* offsets into the buffer */
    uint32_t value, value_len; /* leading whitespace skipped, trailing kept (as llhttp) */
};

struct hh_limits {
    size_t header_limit;   /* request-target + fields (`name: value\r\n`) bytes */
    size_t max_fields;     /* fields a head may have */
    size_t max_field_line; /* bytes of `name: value` */
};

struct hh_head {
    size_t end;                  /* offset just past the head's CRLF CRLF */
    uint32_t method, method_len; /* offsets into the buffer */
    uint32_t target, target_len;
    int minor;                   /* HTTP/1.<minor> */
    int keep_alive;
    int host;                    /* index of the Host field, -1 when there is none */
    size_t nfields;
};

/* Scans the head at buf[start:len). fields must have room for lim->max_fields + 1 entries.
 * Returns HH_ACCEPT (head and fields filled), HH_DEFER, HH_INCOMPLETE or a status. */
int hh_scan(const char *buf, size_t len, size_t start, const struct hh_limits *lim,
            struct hh_head *head, struct hh_field *fields);

#endif /* MESHKIT_HTTP_HEAD_H */
