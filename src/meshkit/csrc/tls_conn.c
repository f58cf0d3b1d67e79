/* tls_conn.c - one server-side TLS connection on a non-blocking socket (see tls_conn.h). */
#define _GNU_SOURCE
#include "tls_conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>

#define DIRECT_MIN 8192     /* a record this large goes to the socket without a copy */
#define FLUSH_AT 65536      /* gathered ciphertext is sent once it reaches this */
#define WRITE_STEP 65536    /* plaintext per SSL_write (four full records) */
#define FILE_STEP 65536     /* file bytes per pread */

static BIO_METHOD *bio_method;
static int ex_index = -1;

/* What a browser sends when an https URL was typed as http (Go's server answers those). */
static const char *const http_starts[] = {"GET /", "HEAD ", "POST ", "PUT /",
                                          "OPTIO", "DELET", "PATCH", "CONNE"};

static int is_plain_http(const char *p, size_t n)
{
    if (n < 5)
        return 0;
    for (size_t i = 0; i < sizeof(http_starts) / sizeof(http_starts[0]); i++)
        if (memcmp(p, http_starts[i], 5) == 0)
            return 1;
    return 0;
}

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int pend_append(mk_tls *t, const char *data, size_t len)
{
    if (t->pend_off == t->pend_len)
        t->pend_off = t->pend_len = 0;
    else if (t->pend_off > 0 && t->pend_len + len > t->pend_cap) {
        memmove(t->pend, t->pend + t->pend_off, t->pend_len - t->pend_off);
        t->pend_len -= t->pend_off;
        t->pend_off = 0;
    }
    if (grow(&t->pend, &t->pend_cap, t->pend_len + len) < 0)
        return -1;
    memcpy(t->pend + t->pend_len, data, len);
    t->pend_len += len;
    return 0;
}

size_t mk_tls_pending(const mk_tls *t) { return t->pend_len - t->pend_off; }

int mk_tls_flush(mk_tls *t)
{
    while (t->pend_off < t->pend_len) {
        if (t->fd < 0)
            return -EBADF;
        ssize_t n = send(t->fd, t->pend + t->pend_off, t->pend_len - t->pend_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -errno;
        }
        t->pend_off += (size_t)n;
    }
    t->pend_off = t->pend_len = 0;
    return 1;
}

/* -- the BIO: the socket, with the pending buffer in front of its write side */

static int bio_write(BIO *b, const char *data, int len)
{
    mk_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->err)
        return -1;
    size_t n = (size_t)len, done = 0;
    if (t->pend_off == t->pend_len && n >= DIRECT_MIN && t->fd >= 0) {
        for (;;) {
            ssize_t r = send(t->fd, data, n, MSG_NOSIGNAL);
            if (r >= 0) {
                done = (size_t)r;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                t->err = errno;
                return -1;
            }
            break;
        }
    }
    if (done < n) {
        if (pend_append(t, data + done, n - done) < 0) {
            t->err = ENOMEM;
            return -1;
        }
        if (mk_tls_pending(t) >= FLUSH_AT) {
            int r = mk_tls_flush(t);
            if (r < 0) {
                t->err = -r;
                return -1;
            }
        }
    }
    return len;
}

static int bio_read(BIO *b, char *out, int len)
{
    mk_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (t->pre_off < t->pre_len) {
        size_t n = t->pre_len - t->pre_off;
        if (n > (size_t)len)
            n = (size_t)len;
        memcpy(out, t->pre + t->pre_off, n);
        t->pre_off += n;
        if (t->pre_off == t->pre_len)
            t->pre_off = t->pre_len = 0;
        return (int)n;
    }
    if (t->fd < 0) {
        t->err = EBADF;
        return -1;
    }
    for (;;) {
        ssize_t n = recv(t->fd, out, (size_t)len, 0);
        if (n > 0) {
            if (t->nread == 0 && is_plain_http(out, (size_t)n)) {
                t->flags |= MKT_PLAIN_HTTP;
                return -1;
            }
            t->nread += (uint64_t)n;
            return (int)n;
        }
        if (n == 0) {
            t->flags |= MKT_EOF;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            BIO_set_retry_read(b);
            return -1;
        }
        t->err = errno;
        return -1;
    }
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    mk_tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* sent at the end of the operation (one send for the whole flight) */
    case BIO_CTRL_EOF:
        return (t->flags & MKT_EOF) != 0;
    case BIO_CTRL_PENDING:
        return (long)(t->pre_len - t->pre_off);
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

int mk_tls_global_init(void)
{
    if (bio_method != NULL)
        return 0;
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "meshkit-socket");
    if (m == NULL || !BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return -1;
    }
    ex_index = SSL_get_ex_new_index(0, "meshkit connection", NULL, NULL, NULL);
    if (ex_index < 0) {
        BIO_meth_free(m);
        return -1;
    }
    bio_method = m;
    return 0;
}

int mk_tls_ex_index(void) { return ex_index; }

mk_tls *mk_tls_new(SSL_CTX *ctx, int fd, void *owner)
{
    mk_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->fd = fd;
    t->ssl = SSL_new(ctx);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (b == NULL) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    SSL_set_accept_state(t->ssl);
    /* one recv() per batch of records; buffers kept for the connection's life (Python's
     * contexts release them when idle, which costs a malloc/free pair per request) */
    SSL_set_read_ahead(t->ssl, 1);
    /* the client's EOF is an EOF (as for the twin, which sees it on the socket first), not
     * an error with a decode_error alert written to a socket nobody reads any more */
    SSL_set_options(t->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_clear_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_ex_data(t->ssl, ex_index, owner);
    return t;
}

void mk_tls_free(mk_tls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees the BIO too */
    free(t->pend);
    free(t->pre);
    free(t);
}

int mk_tls_handshake(mk_tls *t)
{
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->flags |= MKT_READY;
        return MKT_HS_DONE;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return MKT_HS_WANT;
    if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB)
        return MKT_HS_HELLO_WAIT;
    if (t->flags & MKT_PLAIN_HTTP) {
        ERR_clear_error();
        return MKT_HS_PLAIN;
    }
    if (t->err) {
        ERR_clear_error();
        return MKT_HS_SOCKET;
    }
    if (t->flags & MKT_EOF) {
        ERR_clear_error();
        return MKT_HS_EOF;
    }
    return MKT_HS_FAILED;
}

size_t mk_tls_read(mk_tls *t, char *buf, size_t cap, int *status)
{
    size_t total = 0;
    *status = MKT_RD_OK;
    while (total < cap) {
        size_t got = 0;
        ERR_clear_error();
        if (SSL_read_ex(t->ssl, buf + total, cap - total, &got)) {
            total += got;
            if (!SSL_has_pending(t->ssl))
                break; /* all buffered records read: the next read would only hit EAGAIN */
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN || (t->flags & MKT_EOF)) {
            ERR_clear_error();
            *status = MKT_RD_EOF;
        } else if (t->err) {
            ERR_clear_error();
            *status = MKT_RD_SOCKET;
        } else {
            *status = MKT_RD_FAILED;
        }
        break;
    }
    return total;
}

/* Before an operation that writes: send what is pending first only when it is much (the
 * session tickets of a new connection are a few hundred bytes: they go in the same send as
 * the response). 1: go on, 0: the socket is full (state again), <0: -errno. */
static int flush_before(mk_tls *t)
{
    if (mk_tls_pending(t) < FLUSH_AT)
        return 1;
    return mk_tls_flush(t);
}

int mk_tls_write(mk_tls *t, const char *buf, size_t len, size_t *taken, int *state)
{
    *taken = 0;
    *state = 0;
    int r = flush_before(t);
    if (r < 0)
        return r;
    if (r == 0) {
        *state = 1;
        return 0;
    }
    if (len == 0) {
        r = mk_tls_flush(t);
        if (r < 0)
            return r;
        *state = r == 0;
        return 0;
    }
    size_t pos = 0;
    while (pos < len) {
        size_t step = len - pos > WRITE_STEP ? WRITE_STEP : len - pos, w = 0;
        ERR_clear_error();
        if (!SSL_write_ex(t->ssl, buf + pos, step, &w)) {
            int err = t->err;
            ERR_clear_error();
            return err ? -err : -EPROTO;
        }
        pos += w;
        *taken = pos;
        if (pos == len && (t->flags & MKT_SHUT_AFTER)) {
            /* the last answer's close_notify: one send with it, not a second one */
            t->flags &= ~MKT_SHUT_AFTER;
            t->flags |= MKT_WCLOSED;
            if ((t->flags & MKT_READY) && !t->err) {
                ERR_clear_error();
                SSL_shutdown(t->ssl);
                ERR_clear_error();
            }
        }
        r = mk_tls_flush(t);
        if (r < 0)
            return r;
        if (r == 0) {
            *state = pos < len || mk_tls_pending(t) ? 1 : 0;
            return 0;
        }
    }
    return 0;
}

int mk_tls_write_file(mk_tls *t, const char *head, size_t head_len, int file_fd, int64_t offset,
                      uint64_t length, uint64_t *sent, int *state)
{
    static __thread char buf[FILE_STEP];
    *sent = 0;
    *state = 0;
    int r = flush_before(t);
    if (r < 0)
        return r;
    if (r == 0) {
        *state = 1;
        return 0;
    }
    if (head_len > FILE_STEP / 2) { /* a big head goes alone */
        size_t taken;
        r = mk_tls_write(t, head, head_len, &taken, state);
        *sent = taken;
        if (r < 0 || *state)
            return r;
        head_len = 0;
    }
    uint64_t left = length;
    for (;;) {
        size_t fill = 0;
        if (head_len) {
            memcpy(buf, head, head_len);
            fill = head_len;
        }
        size_t want = FILE_STEP - fill;
        if (want > left)
            want = (size_t)left;
        int truncated = 0;
        while (want > 0) {
            ssize_t n = pread(file_fd, buf + fill, want, (off_t)offset);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            if (n == 0) {
                truncated = 1;
                break;
            }
            fill += (size_t)n;
            want -= (size_t)n;
            offset += n;
            left -= (uint64_t)n;
        }
        if (fill > 0) {
            size_t w = 0;
            ERR_clear_error();
            if (!SSL_write_ex(t->ssl, buf, fill, &w)) {
                int err = t->err;
                ERR_clear_error();
                return err ? -err : -EPROTO;
            }
            *sent += w;
            head_len = 0;
        }
        if (truncated) {
            r = mk_tls_flush(t);
            *state = 2;
            return r < 0 ? r : 0;
        }
        r = mk_tls_flush(t);
        if (r < 0)
            return r;
        if (left == 0) {
            *state = r == 0 ? 1 : 0;
            return 0;
        }
        if (r == 0) {
            *state = 1;
            return 0;
        }
    }
}

void mk_tls_close_notify(mk_tls *t)
{
    if (!(t->flags & MKT_WCLOSED)) {
        t->flags |= MKT_WCLOSED;
        if ((t->flags & MKT_READY) && !t->err) {
            ERR_clear_error();
            SSL_shutdown(t->ssl);
            ERR_clear_error();
        }
    }
    mk_tls_flush(t);
}

ssize_t mk_tls_stash(mk_tls *t)
{
    if (t->fd < 0)
        return -EBADF;
    if (t->pre_off == t->pre_len)
        t->pre_off = t->pre_len = 0;
    if (grow(&t->pre, &t->pre_cap, t->pre_len + 16384) < 0)
        return -ENOMEM;
    for (;;) {
        ssize_t n = recv(t->fd, t->pre + t->pre_len, 16384, 0);
        if (n >= 0) {
            t->pre_len += (size_t)n;
            t->nread += (uint64_t)n;
            return n;
        }
        if (errno != EINTR)
            return -errno;
    }
}

void mk_tls_error_text(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        snprintf(buf, cap, "unknown TLS error");
    else
        ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
}
