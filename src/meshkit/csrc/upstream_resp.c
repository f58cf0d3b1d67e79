/* The proxy's upstream response path (see includes/upstream_resp.h). */
#define _GNU_SOURCE
#include "upstream_resp.h"

#include <string.h>
#include <strings.h>

/* RFC 9110 tchar */
static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* a field value or reason byte: HTAB, SP, VCHAR, obs-text (no other control, no DEL) */
static inline int value_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int name_is(const unsigned char *p, size_t n, const char *lower)
{
    size_t m = strlen(lower);
    return n == m && strncasecmp((const char *)p, lower, n) == 0;
}

static const unsigned char *find_ci(const unsigned char *p, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp((const char *)p + i, needle, m) == 0)
            return p + i;
    return NULL;
}

static int hop_name(const unsigned char *p, size_t n)
{
    switch (n) {
    case 2: return name_is(p, n, "te");
    case 7: return name_is(p, n, "trailer") || name_is(p, n, "upgrade");
    case 10: return name_is(p, n, "connection") || name_is(p, n, "keep-alive");
    case 16: return name_is(p, n, "proxy-connection");
    case 17: return name_is(p, n, "transfer-encoding");
    case 18: return name_is(p, n, "proxy-authenticate");
    case 19: return name_is(p, n, "proxy-authorization");
    default: return 0;
    }
}

int up_parse_head(const unsigned char *buf, size_t len, int head_only, up_head *out)
{
    if (len < 12 || len > UP_MAX_HEAD || memcmp(buf, "HTTP/1.1 ", 9) != 0)
        return UP_DECLINE;
    for (int i = 9; i < 12; i++)
        if (buf[i] < '0' || buf[i] > '9')
            return UP_DECLINE;
    int status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (status < 100 || status > 599 || status == 101)
        return UP_DECLINE;
    size_t pos = 12;
    if (pos < len && buf[pos] != '\r') {
        if (buf[pos] != ' ')
            return UP_DECLINE;
        while (pos < len && buf[pos] != '\r') {
            if (!value_byte(buf[pos]))
                return UP_DECLINE;
            pos++;
        }
    }
    out->status = status;
    out->keep = 1;
    out->interim = 0;
    out->conn_tokens = 0;
    out->content_length = -1;
    out->nfields = 0;
    int chunked = 0, has_te = 0, upgrade = 0;
    while (pos < len) {
        /* at "\r\n" before a field line */
        if (pos + 2 > len || buf[pos] != '\r' || buf[pos + 1] != '\n')
            return UP_DECLINE;
        pos += 2;
        size_t name = pos;
        while (pos < len && TCHAR[buf[pos]])
            pos++;
        if (pos == name || pos >= len || buf[pos] != ':')
            return UP_DECLINE;
        size_t name_len = pos - name;
        pos++;
        while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t'))
            pos++;
        size_t value = pos;
        while (pos < len && buf[pos] != '\r') {
            if (!value_byte(buf[pos]))
                return UP_DECLINE;
            pos++;
        }
        size_t value_len = pos - value;
        if (out->nfields >= UP_MAX_FIELDS)
            return UP_DECLINE;
        up_field *f = &out->fields[out->nfields++];
        f->name_off = (uint32_t)name;
        f->name_len = (uint32_t)name_len;
        f->value_off = (uint32_t)value;
        f->value_len = (uint32_t)value_len;
        f->flags = hop_name(buf + name, name_len) ? UP_F_HOP : 0;
        const unsigned char *v = buf + value;
        size_t vt = value_len; /* without trailing blanks */
        while (vt && (v[vt - 1] == ' ' || v[vt - 1] == '\t'))
            vt--;
        if (name_is(buf + name, name_len, "content-length")) {
            if (out->content_length >= 0 || vt == 0 || vt > 18)
                return UP_DECLINE;
            long long n = 0;
            for (size_t i = 0; i < vt; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return UP_DECLINE;
                n = n * 10 + (v[i] - '0');
            }
            out->content_length = n;
        } else if (name_is(buf + name, name_len, "transfer-encoding")) {
            if (has_te && !head_only)
                return UP_DECLINE;
            has_te = 1; /* (an answer to HEAD has no body: any coding, any number) */
            if (vt == 7 && strncasecmp((const char *)v, "chunked", 7) == 0)
                chunked = 1;
            else if (!head_only)
                return UP_DECLINE; /* other codings: llhttp's rules */
        } else if (name_is(buf + name, name_len, "connection")) {
            if (find_ci(v, value_len, "upgrade"))
                upgrade = 1;
            if (find_ci(v, value_len, "close"))
                out->keep = 0;
            out->conn_tokens = 1;
        } else if (name_is(buf + name, name_len, "upgrade")) {
            upgrade = 1;
        }
    }
    if (upgrade && !head_only)
        return UP_DECLINE; /* llhttp's upgrade rules: leave them to it */
    int framed = chunked || out->content_length >= 0;
    if (has_te && out->content_length >= 0)
        return UP_DECLINE; /* both framings: a smuggling shape the parser refuses */
    if (head_only) {
        out->framing = UP_BODY_NONE;
        out->interim = status < 200;
    } else if (status < 200 || status == 204 || status == 304) {
        if (framed)
            return UP_DECLINE;
        out->framing = UP_BODY_NONE;
        out->interim = status < 200;
    } else if (chunked) {
        out->framing = UP_BODY_CHUNKED;
    } else if (out->content_length >= 0) {
        out->framing = UP_BODY_LENGTH;
    } else {
        out->framing = UP_BODY_CLOSE;
        out->keep = 0;
    }
    if (out->conn_tokens)
        up_mark_connection_tokens(buf, out);
    return UP_OK;
}

void up_mark_connection_tokens(const unsigned char *buf, up_head *h)
{
    for (int i = 0; i < h->nfields; i++) {
        up_field *c = &h->fields[i];
        if (!name_is(buf + c->name_off, c->name_len, "connection"))
            continue;
        const unsigned char *v = buf + c->value_off;
        size_t n = c->value_len, pos = 0;
        while (pos <= n) {
            size_t start = pos;
            while (pos < n && v[pos] != ',')
                pos++;
            size_t a = start, b = pos;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (b > a) {
                for (int j = 0; j < h->nfields; j++) {
                    up_field *f = &h->fields[j];
                    if (f->name_len == b - a &&
                        strncasecmp((const char *)buf + f->name_off, (const char *)v + a, b - a) == 0)
                        f->flags |= UP_F_HOP;
                }
            }
            pos++;
        }
    }
}

enum {
    S_SIZE0 = 0, /* first hex digit of a size line */
    S_SIZE,      /* more digits, ';' or CR */
    S_EXT,       /* just after ';': a name or '=' */
    S_EXT_NAME,
    S_EXT_VALUE0, /* just after '=' */
    S_EXT_VALUE,
    S_EXT_QUOTED,
    S_EXT_QUOTED_ESC,
    S_EXT_QUOTED_END,
    S_SIZE_LF,
    S_DATA,
    S_DATA_CR,
    S_DATA_LF,
    S_TRAILER, /* at the start of a trailer line (or the final CRLF) */
    S_TRAILER_NAME,
    S_TRAILER_LINE,
    S_TRAILER_LF,
    S_END_LF,
    S_DONE,
};

#define MAX_TRAILER (64 * 1024)

static inline int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int up_dechunk(up_chunked *st, const unsigned char *in, size_t len, unsigned char *out,
               size_t *used, size_t *produced)
{
    size_t pos = 0, made = 0;
    int rc = UP_CHUNK_MORE;
    while (pos < len) {
        unsigned char c = in[pos];
        switch (st->state) {
        case S_SIZE0:
        case S_SIZE: {
            int h = hexval(c);
            if (h >= 0) {
                if (st->digits >= 15)
                    goto error;
                st->left = (st->left << 4) | (uint64_t)h;
                st->digits++;
                st->state = S_SIZE;
            } else if (st->state == S_SIZE && c == ';') {
                st->state = S_EXT;
            } else if (st->state == S_SIZE && c == '\r') {
                st->state = S_SIZE_LF;
            } else {
                goto error;
            }
            pos++;
            break;
        }
        /* chunk extensions as llhttp reads them: ;name[=token|"quoted"] with no blanks */
        case S_EXT:
            if (TCHAR[c])
                st->state = S_EXT_NAME;
            else if (c == '=')
                st->state = S_EXT_VALUE0;
            else
                goto error;
            pos++;
            break;
        case S_EXT_NAME:
        case S_EXT_VALUE:
            if (TCHAR[c])
                ;
            else if (c == '=' && st->state == S_EXT_NAME)
                st->state = S_EXT_VALUE0;
            else if (c == ';')
                st->state = S_EXT;
            else if (c == '\r')
                st->state = S_SIZE_LF;
            else
                goto error;
            pos++;
            break;
        case S_EXT_VALUE0:
            if (TCHAR[c])
                st->state = S_EXT_VALUE;
            else if (c == '"')
                st->state = S_EXT_QUOTED;
            else if (c == ';')
                st->state = S_EXT;
            else if (c == '\r')
                st->state = S_SIZE_LF;
            else
                goto error;
            pos++;
            break;
        case S_EXT_QUOTED:
            if (c == '"')
                st->state = S_EXT_QUOTED_END;
            else if (c == '\\')
                st->state = S_EXT_QUOTED_ESC;
            else if (!value_byte(c))
                goto error;
            pos++;
            break;
        case S_EXT_QUOTED_ESC:
            if (!value_byte(c))
                goto error;
            st->state = S_EXT_QUOTED;
            pos++;
            break;
        case S_EXT_QUOTED_END:
            if (c == ';')
                st->state = S_EXT;
            else if (c == '\r')
                st->state = S_SIZE_LF;
            else
                goto error;
            pos++;
            break;
        case S_SIZE_LF:
            if (c != '\n')
                goto error;
            pos++;
            st->digits = 0;
            st->state = st->left ? S_DATA : S_TRAILER;
            break;
        case S_DATA: {
            size_t take = len - pos;
            if (take > st->left)
                take = (size_t)st->left;
            memcpy(out + made, in + pos, take);
            made += take;
            pos += take;
            st->left -= take;
            if (!st->left)
                st->state = S_DATA_CR;
            break;
        }
        case S_DATA_CR:
            if (c != '\r')
                goto error;
            st->state = S_DATA_LF;
            pos++;
            break;
        case S_DATA_LF:
            if (c != '\n')
                goto error;
            st->state = S_SIZE0;
            pos++;
            break;
        case S_TRAILER:
            if (c == '\r') {
                st->state = S_END_LF;
            } else if (TCHAR[c]) {
                st->state = S_TRAILER_NAME;
            } else {
                goto error;
            }
            pos++;
            break;
        case S_TRAILER_NAME: /* a field name, then its value (as the head's fields) */
            if (c == ':')
                st->state = S_TRAILER_LINE;
            else if (!TCHAR[c])
                goto error;
            if (++st->trailer > MAX_TRAILER)
                goto error;
            pos++;
            break;
        case S_TRAILER_LINE:
            if (c == '\r')
                st->state = S_TRAILER_LF;
            else if (!value_byte(c))
                goto error;
            if (++st->trailer > MAX_TRAILER)
                goto error;
            pos++;
            break;
        case S_TRAILER_LF:
            if (c != '\n')
                goto error;
            st->state = S_TRAILER;
            pos++;
            break;
        case S_END_LF:
            if (c != '\n')
                goto error;
            st->state = S_DONE;
            pos++;
            rc = UP_CHUNK_DONE;
            goto out;
        default:
            goto error;
        }
    }
out:
    *used = pos;
    *produced = made;
    return rc;
error:
    *used = pos;
    *produced = made;
    return UP_CHUNK_ERROR;
}
