/* http_head.c - one-pass HTTP/1 request-head scanner (see http_head.h).
 *
 * Written for meshkit (not vendored): the grammar is llhttp's as httptools 0.9 runs it (so that
 * the lane accepts exactly what the httptools path accepts), the decisions are
 * meshkit/web/http1.py's, and the order of the checks is the connection's (the first defect
 * found is the one the httptools path reports). The pure-Python twin is
 * meshkit/web/headparse.py; tests/web/test_headparse_diff.py compares the three.
 */
#define _GNU_SOURCE 1
#include "http_head.h"

#include <string.h>

#define CLASS_TOKEN 1  /* tchar (RFC 9110) */
#define CLASS_TARGET 2 /* what llhttp takes in an origin-form target: 0x21-0x7e */
#define CLASS_VALUE 4  /* field-value bytes: HTAB, SP, VCHAR, obs-text */
#define CLASS_REGNAME 8 /* http1._HOST's reg-name set */
#define CLASS_ZONE 16  /* http1._HOST's zone set */
#define CLASS_STRSPACE 32 /* what Python's str.strip() removes from a latin-1 string */

static unsigned char cls[256];
static int cls_ready;

static void init_classes(void)
{
    const char *tchar = "!#$%&'*+-.^_`|~";
    const char *regname = "-._~%!$&'()*+,;=";
    const char *zone = "-._~%";
    const char *strspace = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0";
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        int alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        if (alnum || (c && strchr(tchar, c)))
            k |= CLASS_TOKEN;
        if (c >= 0x21 && c <= 0x7e)
            k |= CLASS_TARGET;
        if (c == '\t' || (c >= 0x20 && c <= 0x7e) || c >= 0x80)
            k |= CLASS_VALUE;
        if (alnum || (c && strchr(regname, c)))
            k |= CLASS_REGNAME;
        if (alnum || (c && strchr(zone, c)))
            k |= CLASS_ZONE;
        if (c && c != 0x85 && c != 0xa0 && strchr(strspace, c))
            k |= CLASS_STRSPACE;
        if (c == 0x85 || c == 0xa0)
            k |= CLASS_STRSPACE;
        cls[c] = k;
    }
    cls_ready = 1;
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* case-insensitive compare of s[0:n) with the lower-case literal lit */
static int ieq(const unsigned char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != lit[i])
            return 0;
    return 1;
}

static int is_ows(int c)
{
    return c == ' ' || c == '\t';
}

/* trims SP/HTAB on both sides of s[*a:*b) */
static void trim_ows(const unsigned char *s, size_t *a, size_t *b)
{
    while (*a < *b && is_ows(s[*a]))
        (*a)++;
    while (*b > *a && is_ows(s[*b - 1]))
        (*b)--;
}

/* the names llhttp matches itself, whose span a space ends */
static int space_ended(const unsigned char *s, size_t n)
{
    return ieq(s, n, "content-length") || ieq(s, n, "transfer-encoding") ||
           ieq(s, n, "connection") || ieq(s, n, "proxy-connection") || ieq(s, n, "upgrade");
}

/* llhttp's request methods (HTTP mode) but CONNECT and PRI (deferred to httptools) */
static const char *const methods[] = {
    "DELETE", "GET", "HEAD", "POST", "PUT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL",
    "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL",
    "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE",
    "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY", NULL,
};

static int known_method(const unsigned char *s, size_t n)
{
    if (n == 3 && memcmp(s, "GET", 3) == 0)
        return 1;
    for (const char *const *m = methods; *m; m++)
        if (strlen(*m) == n && memcmp(s, *m, n) == 0)
            return 1;
    return 0;
}

/* http1.valid_host: reg-name or [IPv6(%25zone)?], then optionally ':' digits */
static int valid_host(const unsigned char *s, size_t n)
{
    size_t i = 0;
    if (n && s[0] == '[') {
        i = 1;
        size_t a = i;
        while (i < n && (s[i] == ':' || s[i] == '.' || (s[i] >= '0' && s[i] <= '9') ||
                         (lower(s[i]) >= 'a' && lower(s[i]) <= 'f')))
            i++;
        if (i == a)
            return 0;
        if (i + 3 <= n && s[i] == '%' && s[i + 1] == '2' && s[i + 2] == '5') {
            size_t z = i + 3;
            i = z;
            while (i < n && (cls[s[i]] & CLASS_ZONE))
                i++;
            if (i == z)
                return 0;
        }
        if (i >= n || s[i] != ']')
            return 0;
        i++;
    } else {
        while (i < n && (cls[s[i]] & CLASS_REGNAME))
            i++;
        if (i == 0)
            return 0;
    }
    if (i == n)
        return 1;
    if (s[i] != ':')
        return 0;
    for (i++; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* the tokens of one Connection value: sets bit 1 for close, bit 2 for keep-alive */
static int connection_tokens(const unsigned char *s, size_t n)
{
    int found = 0;
    size_t a = 0;
    while (a <= n) {
        size_t b = a;
        while (b < n && s[b] != ',')
            b++;
        size_t x = a, y = b;
        while (x < y && (cls[s[x]] & CLASS_STRSPACE))
            x++;
        while (y > x && (cls[s[y - 1]] & CLASS_STRSPACE))
            y--;
        if (ieq(s + x, y - x, "close"))
            found |= 1;
        else if (ieq(s + x, y - x, "keep-alive"))
            found |= 2;
        a = b + 1;
    }
    return found;
}

/* http1.check_framing on the fields, after phase 1 let at most one Content-Length and no
 * Content-Length with Transfer-Encoding through: 0 (no body), 1 (a body) or a status. */
static int framing(const unsigned char *s, const struct hh_field *f, size_t nf)
{
    int expect = 0, cl = -1, te = 0;
    for (size_t i = 0; i < nf; i++) {
        const unsigned char *name = s + f[i].name;
        if (ieq(name, f[i].name_len, "content-length")) {
            cl = (int)i;
        } else if (ieq(name, f[i].name_len, "transfer-encoding")) {
            te = 1;
        } else if (ieq(name, f[i].name_len, "expect")) {
            size_t a = f[i].value, b = a + f[i].value_len;
            /* bytes.strip(): the value holds no \n \r \v \f (phase 1 refused them) */
            trim_ows(s, &a, &b);
            if (!ieq(s + a, b - a, "100-continue"))
                return 417;
            expect = 1;
        }
    }
    if (cl >= 0) {
        size_t a = f[cl].value, b = a + f[cl].value_len;
        trim_ows(s, &a, &b);
        if (a == b || b - a > 18)
            return 400;
        uint64_t n = 0;
        for (size_t i = a; i < b; i++) {
            if (s[i] < '0' || s[i] > '9')
                return 400;
            n = n * 10 + (uint64_t)(s[i] - '0');
        }
        return (n || expect) ? 1 : 0;
    }
    if (!te)
        return 0;
    /* the codings of every Transfer-Encoding field, in order */
    int count = 0, chunked = 0, last_chunked = 0, empty = 0;
    for (size_t i = 0; i < nf; i++) {
        if (!ieq(s + f[i].name, f[i].name_len, "transfer-encoding"))
            continue;
        size_t a = f[i].value, end = a + f[i].value_len;
        for (;;) {
            size_t b = a;
            while (b < end && s[b] != ',')
                b++;
            size_t x = a, y = b;
            trim_ows(s, &x, &y);
            count++;
            last_chunked = ieq(s + x, y - x, "chunked");
            chunked += last_chunked;
            empty |= x == y;
            if (b == end)
                break;
            a = b + 1;
        }
    }
    if (!last_chunked || chunked != 1 || empty)
        return 400;
    if (count > 1)
        return 501;
    return 1;
}

/* The first CR LF (need 2) or CR LF CR LF (need 4) in s[0:n), or NULL: memchr for each CR,
 * cheaper than memmem(3) over a head's few lines. */
static const unsigned char *find_crlf(const unsigned char *s, size_t n, size_t need)
{
    const unsigned char *end = s + n;
    while ((size_t)(end - s) >= need) {
        const unsigned char *cr = memchr(s, '\r', (size_t)(end - s) - (need - 1));
        if (!cr)
            return NULL;
        if (cr[1] == '\n' && (need == 2 || (cr[2] == '\r' && cr[3] == '\n')))
            return cr;
        s = cr + 1;
    }
    return NULL;
}

int hh_scan(const char *buf, size_t len, size_t start, const struct hh_limits *lim,
            struct hh_head *head, struct hh_field *fields)
{
    const unsigned char *s = (const unsigned char *)buf;
    if (!cls_ready)
        init_classes();
    if (start >= len)
        return HH_INCOMPLETE;
    const unsigned char *crlf2 = find_crlf(s + start, len - start, 4);
    if (!crlf2)
        return HH_INCOMPLETE;
    size_t head_end = (size_t)(crlf2 - s);
    head->end = head_end + 4;
    if (s[start] == '\r' || s[start] == '\n')
        return HH_DEFER; /* empty lines before the request line: llhttp skips them */
    if (head_end + 4 > UINT32_MAX)
        return HH_DEFER;

    /* the request line: METHOD SP /target SP HTTP/d.d CRLF */
    const unsigned char *lf = find_crlf(s + start, head_end + 2 - start, 2);
    size_t line_end = (size_t)(lf - s);
    const unsigned char *sp = memchr(s + start, ' ', line_end - start);
    if (!sp)
        return 400;
    size_t msp = (size_t)(sp - s);
    if (!known_method(s + start, msp - start)) {
        if ((msp - start == 7 && memcmp(s + start, "CONNECT", 7) == 0) ||
            (msp - start == 3 && memcmp(s + start, "PRI", 3) == 0))
            return HH_DEFER; /* an upgrade; the rest of an HTTP/2 preface */
        return 400;
    }
    size_t pos = msp + 1;
    if (s[pos] != '/')
        return HH_DEFER; /* absolute-, authority- or asterisk-form, or more spaces */
    size_t t = pos;
    while (t < line_end && (cls[s[t]] & CLASS_TARGET))
        t++;
    if (t == line_end || s[t] != ' ')
        return 400; /* no version (HTTP/0.9), or a control, DEL or non-ASCII byte */
    const unsigned char *v = s + t + 1;
    size_t vlen = line_end - (t + 1);
    if (vlen && v[0] == ' ')
        return HH_DEFER;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return 400;
    int major = v[5] - '0', minor = v[7] - '0';
    int vok = (major == 1 && minor <= 1) || (major == 2 && minor == 0) ||
              (major == 0 && minor == 9);
    if (!vok)
        return 400; /* llhttp knows no other version */
    head->method = (uint32_t)start;
    head->method_len = (uint32_t)(msp - start);
    head->target = (uint32_t)pos;
    head->target_len = (uint32_t)(t - pos);

    /* the field lines, as llhttp reads them */
    size_t nf = 0, size = 0, prev = 0;
    int cl_seen = 0, te_seen = 0, chunked_final = 0, upgrade = 0;
    pos = line_end + 2;
    while (pos < head_end + 2) {
        if (s[pos] == ' ' || s[pos] == '\t')
            return 400; /* obs-fold, or whitespace before a name */
        size_t c = pos;
        while (cls[s[c]] & CLASS_TOKEN)
            c++;
        if (c == pos || s[c] != ':') {
            /* llhttp ends a name it knows at a space (and then refuses the space), so the
             * previous field reaches on_header first */
            if (c > pos && s[c] == ' ' && nf && space_ended(s + pos, c - pos) &&
                (nf > lim->max_fields || prev > lim->max_field_line))
                return 431;
            return 400;
        }
        /* the previous field reaches the connection's on_header once this name is read */
        if (nf && (nf > lim->max_fields || prev > lim->max_field_line))
            return 431;
        size_t va = c + 1;
        while (is_ows(s[va]))
            va++;
        size_t ve = va;
        while (cls[s[ve]] & CLASS_VALUE)
            ve++;
        if (s[ve] != '\r' || s[ve + 1] != '\n')
            return 400; /* a control byte, bare CR or bare LF in the value */
        const unsigned char *name = s + pos;
        size_t nlen = c - pos;
        if (ieq(name, nlen, "content-length")) {
            if (cl_seen || te_seen)
                return 400;
            cl_seen = 1;
            size_t b = ve;
            while (b > va && is_ows(s[b - 1]))
                b--;
            if (b == va)
                return 400;
            uint64_t n = 0;
            for (size_t i = va; i < b; i++) {
                if (s[i] < '0' || s[i] > '9')
                    return 400;
                unsigned d = (unsigned)(s[i] - '0');
                if (n > (UINT64_MAX - d) / 10)
                    return 400; /* overflow */
                n = n * 10 + d;
            }
        } else if (ieq(name, nlen, "transfer-encoding")) {
            size_t b = ve;
            while (b > va && is_ows(s[b - 1]))
                b--;
            if (cl_seen || chunked_final || b == va)
                return 400;
            te_seen = 1;
            /* llhttp: nothing may follow a chunked coding */
            size_t a = va;
            for (;;) {
                size_t e = a;
                while (e < ve && s[e] != ',')
                    e++;
                size_t x = a, y = e;
                trim_ows(s, &x, &y);
                int is_chunked = ieq(s + x, y - x, "chunked");
                if (e == ve) {
                    chunked_final = is_chunked;
                    break;
                }
                if (is_chunked)
                    return 400;
                a = e + 1;
            }
        } else if (ieq(name, nlen, "upgrade")) {
            upgrade = 1;
        }
        if (nf > lim->max_fields)
            return 431; /* unreachable: checked above once the next name is read */
        fields[nf].name = (uint32_t)pos;
        fields[nf].name_len = (uint32_t)nlen;
        fields[nf].value = (uint32_t)va;
        fields[nf].value_len = (uint32_t)(ve - va);
        nf++;
        size += nlen + (ve - va) + 4;
        prev = nlen + (ve - va) + 2;
        pos = ve + 2;
    }
    if (nf && (nf > lim->max_fields || prev > lim->max_field_line))
        return 431;

    /* the end of the head: the connection's on_headers_complete, in its order */
    if (!(major == 1))
        return (major == 2) ? 505 : 400;
    int hosts = 0, host = -1, conn = 0, has_conn = 0, special = 0;
    for (size_t i = 0; i < nf; i++) {
        const unsigned char *name = s + fields[i].name;
        size_t nlen = fields[i].name_len;
        if (ieq(name, nlen, "host")) {
            hosts++;
            host = (int)i;
        } else if (ieq(name, nlen, "connection")) {
            has_conn = 1;
            conn |= connection_tokens(s + fields[i].value, fields[i].value_len);
        } else if (ieq(name, nlen, "content-length") || ieq(name, nlen, "transfer-encoding") ||
                   ieq(name, nlen, "expect")) {
            special = 1;
        }
    }
    if (hosts > 1 || (hosts == 0 && minor == 1))
        return 400;
    if (hosts && !valid_host(s + fields[host].value, fields[host].value_len))
        return 400;
    int body = 0;
    if (special) {
        body = framing(s, fields, nf);
        if (body > 1)
            return body;
    }
    if (!has_conn)
        head->keep_alive = minor == 1;
    else if (minor == 1)
        head->keep_alive = !(conn & 1);
    else
        head->keep_alive = (conn & 2) && !(conn & 1);
    if (size + head->target_len > lim->header_limit)
        return 431;
    if (body || upgrade)
        return HH_DEFER;
    head->minor = minor;
    head->host = host;
    head->nfields = nf;
    return HH_ACCEPT;
}
