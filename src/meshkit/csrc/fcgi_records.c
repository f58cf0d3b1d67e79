/* The FastCGI record layer's hot path (see includes/fcgi_records.h). */
#define _GNU_SOURCE
#include "fcgi_records.h"

#include <string.h>

#define HEADER_LEN 8
#define MAX_CONTENT 0xFFFF
#define T_BEGIN_REQUEST 1
#define T_END_REQUEST 3
#define T_PARAMS 4
#define T_STDIN 5
#define T_STDOUT 6

long fcgi_scan_whole(const unsigned char *buf, size_t len, uint32_t *app, uint8_t *proto)
{
    size_t pos = 0;
    long total = 0;
    while (len - pos >= HEADER_LEN) {
        const unsigned char *h = buf + pos;
        unsigned rtype = h[1];
        unsigned rid = ((unsigned)h[2] << 8) | h[3];
        size_t clen = ((size_t)h[4] << 8) | h[5];
        size_t plen = h[6];
        size_t stop = pos + HEADER_LEN + clen;
        if (h[0] != 1 || rid != 1 || stop + plen > len)
            return -1;
        if (rtype == T_STDOUT) {
            total += (long)clen;
        } else if (rtype == T_END_REQUEST && clen >= 8 && stop + plen == len) {
            const unsigned char *b = h + HEADER_LEN;
            *app = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
            *proto = b[4];
            return total;
        } else {
            return -1;
        }
        pos = stop + plen;
    }
    return -1;
}

void fcgi_copy_stdout(const unsigned char *buf, size_t len, unsigned char *out)
{
    size_t pos = 0;
    while (len - pos >= HEADER_LEN) {
        const unsigned char *h = buf + pos;
        size_t clen = ((size_t)h[4] << 8) | h[5];
        if (h[1] != T_STDOUT)
            return;
        memcpy(out, h + HEADER_LEN, clen);
        out += clen;
        pos += HEADER_LEN + clen + h[6];
    }
}

/* --- the CGI head ------------------------------------------------------------------------- */

static int lower_eq(const unsigned char *s, size_t n, const char *lit)
{
    size_t i;
    if (strlen(lit) != n)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

static long find(const unsigned char *buf, size_t len, const char *needle, size_t nlen)
{
    const unsigned char *p = memmem(buf, len, needle, nlen);
    return p ? (long)(p - buf) : -1;
}

/* Python's str.strip() over the bytes this parser accepts (space and tab) */
static void strip(const unsigned char *buf, size_t *start, size_t *stop)
{
    while (*start < *stop && (buf[*start] == ' ' || buf[*start] == '\t'))
        (*start)++;
    while (*stop > *start && (buf[*stop - 1] == ' ' || buf[*stop - 1] == '\t'))
        (*stop)--;
}

int fcgi_parse_head(const unsigned char *buf, size_t len, fcgi_head *head)
{
    long crlf = find(buf, len, "\r\n\r\n", 4);
    long lf = find(buf, len, "\n\n", 2);
    size_t end, pos, i;
    int location = 0;
    head->status = 0;
    head->content_length = -1;
    head->nfields = 0;
    if (crlf >= 0 && (lf < 0 || crlf + 1 <= lf)) {
        end = (size_t)crlf;
        head->body_start = end + 4;
    } else if (lf >= 0) {
        end = (size_t)lf;
        head->body_start = end + 2;
    } else {
        return -1;
    }
    if (end > FCGI_MAX_HEAD)
        return -1;
    /* printable ASCII, tab, LF, and CR only as one line end: anything else (where Python's
     * str.strip and rstrip would differ from a plain byte scan) is left to Python */
    for (i = 0; i < end; i++) {
        unsigned char c = buf[i];
        if (c >= 0x20 && c < 0x7f)
            continue;
        if (c == '\t' || c == '\n')
            continue;
        if (c == '\r' && (i + 1 == end || buf[i + 1] == '\n') && (i == 0 || buf[i - 1] != '\r'))
            continue;
        return -1;
    }
    pos = 0;
    while (pos < end) {
        const unsigned char *nl = memchr(buf + pos, '\n', end - pos);
        size_t stop = nl ? (size_t)(nl - buf) : end;
        size_t next = nl ? stop + 1 : end;
        size_t colon, ns, ne, vs, ve;
        const unsigned char *c;
        if (stop > pos && buf[stop - 1] == '\r')
            stop--;
        if (stop == pos) {
            pos = next;
            continue;
        }
        c = memchr(buf + pos, ':', stop - pos);
        if (c == NULL)
            return -1;
        colon = (size_t)(c - buf);
        ns = pos;
        ne = colon;
        strip(buf, &ns, &ne);
        if (ns == ne || memchr(buf + ns, ' ', ne - ns) || memchr(buf + ns, '\t', ne - ns))
            return -1;
        vs = colon + 1;
        ve = stop;
        strip(buf, &vs, &ve);
        pos = next;
        if (lower_eq(buf + ns, ne - ns, "status")) {
            const unsigned char *sp = memchr(buf + vs, ' ', ve - vs);
            size_t clen = sp ? (size_t)(sp - buf) - vs : ve - vs;
            int code = 0;
            if (clen != 3)
                return -1;
            for (i = 0; i < 3; i++) {
                if (buf[vs + i] < '0' || buf[vs + i] > '9')
                    return -1;
                code = code * 10 + (buf[vs + i] - '0');
            }
            if (code < 100 || code > 599)
                return -1;
            head->status = code;
            continue;
        }
        if (lower_eq(buf + ns, ne - ns, "connection") ||
            lower_eq(buf + ns, ne - ns, "keep-alive") ||
            lower_eq(buf + ns, ne - ns, "transfer-encoding"))
            continue;
        if (lower_eq(buf + ns, ne - ns, "location")) {
            location = 1;
        } else if (lower_eq(buf + ns, ne - ns, "content-length")) {
            long long n = 0;
            if (ve == vs || ve - vs > 18)
                return -1;
            for (i = vs; i < ve; i++) {
                if (buf[i] < '0' || buf[i] > '9')
                    return -1;
                n = n * 10 + (buf[i] - '0');
            }
            head->content_length = n;
        }
        if (head->nfields == FCGI_MAX_FIELDS)
            return -1;
        head->fields[head->nfields].name_off = (uint32_t)ns;
        head->fields[head->nfields].name_len = (uint32_t)(ne - ns);
        head->fields[head->nfields].value_off = (uint32_t)vs;
        head->fields[head->nfields].value_len = (uint32_t)(ve - vs);
        head->nfields++;
    }
    if (!head->status)
        head->status = location ? 302 : 200;
    return 0;
}

/* --- encoding ----------------------------------------------------------------------------- */

static size_t stream_size(size_t n)
{
    size_t size = HEADER_LEN, left = n;
    while (left) {
        size_t piece = left < MAX_CONTENT ? left : MAX_CONTENT;
        size += HEADER_LEN + piece + ((8 - (piece & 7)) & 7);
        left -= piece;
    }
    return size;
}

size_t fcgi_request_size(size_t params_len, long long stdin_len)
{
    size_t size = 2 * HEADER_LEN + stream_size(params_len);
    if (stdin_len >= 0)
        size += stream_size((size_t)stdin_len);
    return size;
}

static unsigned char *put_header(unsigned char *out, unsigned rtype, unsigned rid, size_t clen,
                                 size_t plen)
{
    out[0] = 1;
    out[1] = (unsigned char)rtype;
    out[2] = (unsigned char)(rid >> 8);
    out[3] = (unsigned char)rid;
    out[4] = (unsigned char)(clen >> 8);
    out[5] = (unsigned char)clen;
    out[6] = (unsigned char)plen;
    out[7] = 0;
    return out + HEADER_LEN;
}

static unsigned char *put_stream(unsigned char *out, unsigned rtype, unsigned rid,
                                 const unsigned char *data, size_t n)
{
    while (n) {
        size_t piece = n < MAX_CONTENT ? n : MAX_CONTENT;
        size_t pad = (8 - (piece & 7)) & 7;
        out = put_header(out, rtype, rid, piece, pad);
        memcpy(out, data, piece);
        out += piece;
        memset(out, 0, pad);
        out += pad;
        data += piece;
        n -= piece;
    }
    return put_header(out, rtype, rid, 0, 0);
}

size_t fcgi_encode_request(unsigned char *out, unsigned request_id, int keep_conn,
                           const unsigned char *params, size_t params_len,
                           const unsigned char *stdin_buf, long long stdin_len)
{
    unsigned char *p = put_header(out, T_BEGIN_REQUEST, request_id, 8, 0);
    memset(p, 0, 8);
    p[1] = 1; /* RESPONDER */
    p[2] = keep_conn ? 1 : 0;
    p += 8;
    p = put_stream(p, T_PARAMS, request_id, params, params_len);
    if (stdin_len >= 0)
        p = put_stream(p, T_STDIN, request_id, stdin_buf, (size_t)stdin_len);
    return (size_t)(p - out);
}

size_t fcgi_stdin_size(size_t stdin_len)
{
    return stream_size(stdin_len);
}

size_t fcgi_put_stdin(unsigned char *out, unsigned request_id, const unsigned char *data,
                      size_t n)
{
    return (size_t)(put_stream(out, T_STDIN, request_id, data, n) - out);
}

size_t fcgi_put_length(unsigned char *out, uint32_t n)
{
    if (n < 0x80) {
        out[0] = (unsigned char)n;
        return 1;
    }
    out[0] = (unsigned char)((n >> 24) | 0x80);
    out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
    return 4;
}
